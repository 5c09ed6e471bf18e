"""Linears from quantized weights (layers/quantized_linear.py) against F.linear on the dequantised weight:
in float32 equal up to summation order; in bfloat16 within bfloat16's rounding of the activations and of
the scales (8 bits of mantissa: a relative error of a few 2^-9 per product, averaged over the sum)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

from minivllm.core.quantized_weight import from_gguf
from minivllm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from minivllm.layers.quantized_linear import PackedQuantizedLinear


def gguf_weight(qtype: T, rows: int, cols: int, seed: int = 0):
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.05
    return from_gguf(quantize(w, qtype), qtype, cols)


@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q8_0])
def test_packed_quantized_linear_equals_f_linear_on_the_dequantised_weight(qtype, rows):
    torch.manual_seed(0)
    weight, bias = gguf_weight(qtype, 96, 256), torch.randn(96)
    x = torch.randn(2, rows, 256)  # 3-D, as the model's activations may be
    reference = F.linear(x, weight.dequantize(), bias)
    torch.testing.assert_close(PackedQuantizedLinear(weight, torch.float32)(x, bias), reference, rtol=1e-5, atol=1e-5)
    got = PackedQuantizedLinear(weight, torch.bfloat16)(x.bfloat16(), bias.bfloat16()).float()
    assert ((got - reference).norm() / reference.norm()).item() < 1e-2


def load(layer, parts) -> torch.Tensor:
    for loaded, shard_id in parts:
        if shard_id is None:
            layer.weight_loader(layer.weight, loaded)
        else:
            layer.weight_loader(layer.weight, loaded, shard_id)
    layer.pack_weights()
    return layer(torch.randn(3, 128, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "qtypes",
    [(T.Q4_1, T.Q4_1, T.Q4_1), (T.Q8_0, T.Q8_0, T.Q8_0), (T.Q4_0, T.Q4_0, T.Q8_0)],
    ids=["int4", "int8", "mixed"],
)
def test_sharded_layers_keep_quantized_parts_and_equal_the_dequantised_reference(qtypes):
    """q/k/v and gate/up parts of one kind stay quantized; mixed kinds (a Q4_K_M file's Q6_K v) make the
    layer dequantise them all. Either way the output equals the layer loaded from dequantised tensors."""
    q, k, v = (gguf_weight(t, n, 128, seed) for seed, (t, n) in enumerate(zip(qtypes, (64, 32, 32))))
    quantized, plain = (QKVParallelLinear(128, 16, 4, 2) for _ in range(2))
    out = load(quantized, [(q, "q"), (k, "k"), (v, "v")])
    ref = load(plain, [(w.dequantize(), s) for w, s in ((q, "q"), (k, "k"), (v, "v"))])
    assert (quantized.quantized is not None) == (len(set(qtypes)) == 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    gate, up = gguf_weight(qtypes[0], 64, 128, 3), gguf_weight(qtypes[2], 64, 128, 4)
    merged, merged_plain = (MergedColumnParallelLinear(128, [64, 64]) for _ in range(2))
    torch.testing.assert_close(
        load(merged, [(gate, 0), (up, 1)]),
        load(merged_plain, [(gate.dequantize(), 0), (up.dequantize(), 1)]),
        rtol=1e-5,
        atol=1e-5,
    )

    down = gguf_weight(qtypes[0], 128, 128, 5)
    row, row_plain = RowParallelLinear(128, 128), RowParallelLinear(128, 128)
    torch.testing.assert_close(
        load(row, [(down, None)]), load(row_plain, [(down.dequantize(), None)]), rtol=1e-5, atol=1e-5
    )
    assert row.quantized is not None and row.weight.numel() == 0  # only the quantized copy is kept


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_1])
def test_quantized_embedding_and_tied_lm_head_equal_the_dequantised_reference(qtype):
    """The table stays quantized (the parameter is never written); the lookup dequantises only its rows."""
    from minivllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding

    table = gguf_weight(qtype, 100, 64)
    modules = []
    for loaded in (table, table.dequantize()):
        embed = VocabParallelEmbedding(100, 64)
        head = ParallelLMHead(100, 64, tie=embed)
        embed.weight.weight_loader(embed.weight, loaded)
        head.pack_weights()
        modules.append((embed, head))
    (embed, head), (embed_ref, head_ref) = modules
    assert head.quantized is not None and head_ref.quantized is None
    ids = torch.tensor([0, 99, 7, 7])
    torch.testing.assert_close(embed(ids), embed_ref(ids), rtol=0, atol=0)
    hidden = torch.randn(3, 64)
    torch.testing.assert_close(head(hidden), head_ref(hidden), rtol=1e-5, atol=1e-5)
