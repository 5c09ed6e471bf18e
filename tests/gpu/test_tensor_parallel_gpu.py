"""Tensor parallelism over NCCL on two GPUs: tiny float32 checkpoints give the same greedy tokens at TP=2
as at TP=1 and as transformers, with and without async scheduling and the fp8 cache's own TP=1; closing
the engine leaves no worker process behind."""

import multiprocessing

import pytest
import torch

from minivllm import LLM, SamplingParams
from tests.checkpoints import hf_greedy, random_prompts
from tests.conftest import ARCHS

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
CUDA = dict(device="cuda", dtype="float32", kvcache_block_size=16, max_model_len=512, gpu_memory_utilization=0.3)


def _tokens(llm, prompts):
    return [out["tokens"] for out in llm.generate(prompts, GREEDY, use_tqdm=False)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_two_gpus_match_one_and_transformers(checkpoints, arch, async_scheduling):
    path = checkpoints[arch]
    prompts = random_prompts(8, 3, 90, seed=1)
    expected = hf_greedy(path, prompts, GREEDY.max_tokens, device="cuda")
    one = LLM(path, async_scheduling=async_scheduling, **CUDA)
    assert _tokens(one, prompts) == expected
    del one
    torch.cuda.empty_cache()
    with LLM(path, tensor_parallel_size=2, async_scheduling=async_scheduling, **CUDA) as two:
        assert _tokens(two, prompts) == expected
        assert len(multiprocessing.active_children()) == 1
    assert not multiprocessing.active_children()


def test_fp8_cache_over_two_gpus_matches_one(checkpoints):
    path = checkpoints["qwen3"]
    prompts = random_prompts(8, 3, 90, seed=2)
    one = _tokens(LLM(path, kv_cache_dtype="fp8", **CUDA), prompts)
    torch.cuda.empty_cache()
    with LLM(path, tensor_parallel_size=2, kv_cache_dtype="fp8", **CUDA) as two:
        assert _tokens(two, prompts) == one
