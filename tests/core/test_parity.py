"""Greedy token-for-token agreement with transformers on tiny random checkpoints (float32, CPU)."""

import pytest

from minivllm import LLM, SamplingParams
from tests.checkpoints import hf_greedy, random_prompts
from tests.conftest import ARCHS

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _generate(llm, prompts, params=GREEDY):
    return [out["tokens"] for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_length_batch_matches_transformers(checkpoints, arch, async_scheduling):
    path = checkpoints[arch]
    prompts = random_prompts(6, 3, 90, seed=1)
    llm = LLM(path, kvcache_block_size=16, max_model_len=512, dtype="float32", async_scheduling=async_scheduling)
    assert _generate(llm, prompts) == hf_greedy(path, prompts, GREEDY.max_tokens)


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefix_hits_match_transformers(checkpoints, arch, async_scheduling):
    path = checkpoints[arch]
    prefix = random_prompts(1, 40, 40, seed=2)[0]  # longer than two blocks of 16
    prompts = [prefix + tail for tail in random_prompts(4, 1, 20, seed=3)]
    llm = LLM(path, kvcache_block_size=16, max_model_len=512, dtype="float32", async_scheduling=async_scheduling)
    expected = hf_greedy(path, prompts, GREEDY.max_tokens)
    allocator = llm.engine.allocator
    hits = []  # tokens each new sequence found cached, as the allocator reports them to the scheduler
    match_prefix = allocator.match_prefix
    allocator.match_prefix = lambda seq: hits.append(match_prefix(seq)) or hits[-1]
    whole = [(len(p) - 1) // 16 * 16 for p in prompts]  # every full block of a prompt but its last token's
    assert _generate(llm, prompts[:1]) == expected[:1]
    assert hits == [0]
    hits.clear()
    assert _generate(llm, prompts) == expected  # the other prompts hit the first one's blocks
    assert hits == [whole[0], 32, 32, 32]  # the shared 40-token prefix: two full blocks of 16
    hits.clear()
    assert _generate(llm, prompts) == expected  # a second identical call: whole-prefix hits
    assert hits == whole
    # every sequence has finished: every block is free again (cached ones count as free), none leaked
    assert allocator.num_free_blocks == allocator.num_blocks


@pytest.mark.parametrize("arch", ARCHS)
def test_small_kv_cache_queues_and_preempts(checkpoints, arch, async_scheduling):
    path = checkpoints[arch]
    prompts = random_prompts(8, 20, 60, seed=4)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    # 12 blocks of 16 tokens hold about two sequences: the rest queue, and decode must preempt
    llm = LLM(
        path,
        kvcache_block_size=16,
        num_kvcache_blocks=12,
        max_model_len=512,
        dtype="float32",
        async_scheduling=async_scheduling,
    )
    assert _generate(llm, prompts, params) == hf_greedy(path, prompts, params.max_tokens)
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.allocator.num_free_blocks == 12
