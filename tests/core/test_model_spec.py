"""ModelSpec: the rules for reading a Hugging Face config, and how KV heads split over ranks, in one place."""

from types import SimpleNamespace

import pytest

from minivllm.core.model_spec import ModelSpec
from minivllm.core.parallel.tensor_parallel import TensorParallel


def config(**fields):
    base = dict(num_attention_heads=8, hidden_size=256, vocab_size=1000, intermediate_size=512)
    return SimpleNamespace(**(base | fields))


def test_missing_fields_take_their_one_rule():
    spec = ModelSpec.from_hf_config(config())  # no num_key_value_heads, head_dim, max_position_embeddings
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim) == (8, 8, 32)
    assert spec.max_position_embeddings is None
    assert ModelSpec.from_hf_config(config(num_key_value_heads=None)).num_kv_heads == 8
    spec = ModelSpec.from_hf_config(config(num_key_value_heads=2, head_dim=128, max_position_embeddings=2048))
    assert (spec.num_kv_heads, spec.head_dim, spec.max_position_embeddings) == (2, 128, 2048)


@pytest.mark.parametrize(
    ("kv_heads", "tp", "expected"),
    [
        (8, 2, [(4, 0), (4, 4)]),  # split evenly
        (2, 4, [(1, 0), (1, 0), (1, 1), (1, 1)]),  # replicated: each rank keeps its query heads' KV head
        (1, 2, [(1, 0), (1, 0)]),
    ],
)
def test_kv_heads_per_rank(kv_heads, tp, expected):
    ModelSpec.from_hf_config(config(num_key_value_heads=kv_heads)).check_tensor_parallel(tp)
    assert [TensorParallel(rank, tp).shard_kv_heads(kv_heads) for rank in range(tp)] == expected


@pytest.mark.parametrize(
    ("fields", "tp", "message"),
    [
        ({}, 3, "tensor_parallel_size=3 does not divide the model's 8 attention heads"),
        ({"num_key_value_heads": 3, "num_attention_heads": 6}, 2, "neither divides nor is a multiple of the model's 3"),
        ({"num_key_value_heads": 4}, 8, None),  # 8 ranks, 4 KV heads: replicated, fine
        ({"intermediate_size": 500}, 8, "does not divide the model's intermediate_size=500"),
    ],
)
def test_tensor_parallel_check(fields, tp, message):
    spec = ModelSpec.from_hf_config(config(**fields))
    if message is None:
        spec.check_tensor_parallel(tp)
        return
    with pytest.raises(ValueError, match=message):
        spec.check_tensor_parallel(tp)
    # the layers' split refuses what the check refuses (the KV-heads case), with the same rule
    if "num_key_value_heads" in fields:
        with pytest.raises(ValueError, match="num_key_value_heads=3"):
            TensorParallel(0, tp).shard_kv_heads(fields["num_key_value_heads"])
