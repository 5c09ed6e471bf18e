"""The flash_attn backend in the engine, where FlashAttention is installed on a GPU (FlashAttention-3 built by
scripts/build_flash_attn.sh, or FlashAttention-2): greedy decoding agrees with the Triton backend in float16
with CUDA graphs, prefix hits (prefill over cached blocks) and chunked prefill mixed with decode. The kernels'
own numbers against plain attention are the conformance kit's (``minivllm check-plugin attention_backend
flash_attn``)."""

import gc

import pytest
import torch

from minivllm import LLM, SamplingParams
from minivllm.plugins.attention.flash_attn import FlashAttnBackend
from tests.checkpoints import random_prompts
from tests.conftest import ARCHS

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and FlashAttnBackend.is_available(torch.device("cuda"))),
    reason="needs a GPU with flash-attn (scripts/build_flash_attn.sh builds FlashAttention-3 for Hopper)",
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
SETTINGS = dict(
    device="cuda", dtype="float16", kvcache_block_size=256, num_kvcache_blocks=48, max_model_len=1024, max_num_seqs=24
)


def _run(path: str, backend: str) -> list[list[int]]:
    prompts = random_prompts(20, 3, 300, seed=1)  # 20 sequences: replays the decode graph of 24, padded
    prefix = random_prompts(1, 300, 300, seed=2)[0]  # longer than a block: the later prompts hit the cache
    shared = [prefix + tail for tail in random_prompts(4, 1, 20, seed=3)]
    llm = LLM(path, attention_backend=backend, **SETTINGS)
    assert llm.engine.executor.runner.graphs is not None
    runs = [
        out["tokens"] for batch in (prompts, shared[:1], shared) for out in llm.generate(batch, GREEDY, use_tqdm=False)
    ]
    del llm
    chunked = LLM(path, attention_backend=backend, scheduler="chunked", max_num_batched_tokens=64, **SETTINGS)
    runs += [out["tokens"] for out in chunked.generate(prompts[:8], GREEDY, use_tqdm=False)]
    del chunked
    gc.collect()
    torch.cuda.empty_cache()
    return runs


@pytest.mark.parametrize("arch", ARCHS)
def test_flash_attn_agrees_with_triton(checkpoints, arch):
    flash, triton = _run(checkpoints[arch], "flash_attn"), _run(checkpoints[arch], "triton")
    same = sum(a == b for a, b in zip(flash, triton)) / len(flash)
    print(f"{arch}: flash_attn and triton generate the same 12 tokens for {same:.0%} of {len(flash)} sequences")
    assert same >= 0.9  # float16 rounding may flip a near-tie now and then, and the rest of that sequence
