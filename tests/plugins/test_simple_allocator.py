"""The `simple` KV allocator: exact block accounting, no sharing, and the same tokens in the engine."""

from minivllm import LLM, SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.plugins.kv_allocators.simple import SimpleAllocator
from tests.checkpoints import random_prompts

BS = 4


def seq(tokens):
    return Sequence(list(tokens), SamplingParams())


def test_allocate_grows_and_free_returns_every_block():
    alloc = SimpleAllocator(8, BS)
    s = seq(range(10))
    assert alloc.match_prefix(s) == 0
    assert alloc.allocate(s, len(s)) and s.block_table == [0, 1, 2] and alloc.num_free_blocks == 5
    s.append(10), s.append(11)
    assert alloc.allocate(s, len(s)) and len(s.block_table) == 3  # 12 tokens still fit in 3 blocks
    s.append(12)
    assert alloc.allocate(s, len(s)) and s.block_table == [0, 1, 2, 3]
    alloc.free(s)
    assert s.block_table == [] and alloc.num_free_blocks == 8
    assert list(alloc.free_blocks) == [4, 5, 6, 7, 0, 1, 2, 3]  # freed blocks are reused last


def test_allocation_fails_without_change_when_blocks_run_out():
    alloc = SimpleAllocator(3, BS)
    a = seq(range(5))
    assert alloc.allocate(a, len(a))
    b = seq(range(9))  # needs 3 blocks, 1 is free
    assert not alloc.allocate(b, len(b))
    assert b.block_table == [] and alloc.num_free_blocks == 1


def test_identical_prompts_never_share_blocks():
    alloc = SimpleAllocator(8, BS, enable_prefix_caching=True)
    a, b = seq(range(9)), seq(range(9))
    for s in (a, b):
        assert alloc.match_prefix(s) == 0
        assert alloc.allocate(s, len(s))
    assert not set(a.block_table) & set(b.block_table)
    alloc.free(a)
    c = seq(range(9))
    assert alloc.match_prefix(c) == 0 and c.block_table == []  # a's freed blocks are not a cache


def test_engine_with_simple_allocator_matches_prefix_cache_under_preemption(llama_path):
    """Same tokens as the default allocator with room to spare (whose transformers parity tests/core
    proves), while a small cache makes this one queue and preempt."""
    prompts = [p + t for p in random_prompts(1, 40, 40, seed=2) for t in random_prompts(4, 5, 30, seed=5)]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    small = LLM(
        llama_path,
        kv_allocator="simple",
        kvcache_block_size=16,
        num_kvcache_blocks=8,
        max_model_len=512,
        dtype="float32",
    )
    roomy = LLM(llama_path, kvcache_block_size=16, max_model_len=512, dtype="float32")
    expected = [o["tokens"] for o in roomy.generate(prompts, params, use_tqdm=False)]
    assert [o["tokens"] for o in small.generate(prompts, params, use_tqdm=False)] == expected
    assert small.engine.scheduler.num_preemptions > 0
    assert small.engine.allocator.num_free_blocks == 8
