"""The batched CPU backend: "auto" picks it on the CPU, it computes what the torch reference computes on
batches mixing decode rows, whole prompts and chunks over a cached context (model dtypes and fp8), and
through it the engine's greedy tokens equal transformers'. (The conformance kit checks it too: it is
registered, and tests/testing parametrises the kit over every registered backend.)"""

import pytest
import torch

from minivllm import LLM, EngineConfig, SamplingParams
from minivllm.core.interfaces import KVScales, quantize_fp8
from minivllm.plugins.attention.cpu_attn import CpuAttentionBackend
from minivllm.plugins.attention.torch_sdpa import TorchAttentionBackend, context_slots
from tests.attention_batches import make_batch
from tests.checkpoints import hf_greedy, random_prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_auto_picks_cpu_on_the_cpu_and_torch_stays_by_name(llama_path):
    assert EngineConfig(model=llama_path, device="cpu").resolved_attention_backend == "cpu"
    assert EngineConfig(model=llama_path, device="cpu", kv_cache_dtype="fp8").resolved_attention_backend == "cpu"
    assert EngineConfig(model=llama_path, attention_backend="torch").resolved_attention_backend == "torch"
    assert not CpuAttentionBackend.is_available(torch.device("cuda"))


# (new tokens, context) per sequence: decode rows, a one-token prompt, whole prompts, chunks over a context
BATCHES = {
    "decode only": ([1, 1, 1, 1], [37, 5, 130, 1]),
    "mixed": ([1, 20, 1, 7, 1, 33], [64, 20, 9, 40, 1, 33]),
    "prompts only": ([12, 3], [12, 3]),
}


@pytest.mark.parametrize("batch", BATCHES, ids=list(BATCHES))
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "fp8"])
def test_equals_the_torch_reference(batch, kind):
    """Same outputs and same cache contents as the per-sequence reference, GQA (8 query heads over 2); rows
    no sequence wrote hold NaN (as never-written memory may), which must not leak into any output."""
    torch.manual_seed(0)
    query_lens, context_lens = BATCHES[batch]
    block_size, num_blocks, tokens = 16, 24, sum(query_lens)
    meta = make_batch(query_lens, context_lens, block_size, num_blocks, "cpu", 0)
    dtype = torch.float32 if kind == "fp8" else getattr(torch, kind)
    q, k, v = (torch.randn(tokens, h, 64, dtype=dtype) for h in (8, 2, 2))
    cache = torch.full((2, num_blocks * block_size, 2, 64), float("nan"), dtype=dtype)
    for i, seq_len in enumerate(context_lens):
        slots = context_slots(meta.block_tables[i : i + 1], seq_len, block_size)[0]
        cache[:, slots] = torch.randn(2, seq_len, 2, 64, dtype=dtype)
    cache = cache.view(2, num_blocks, block_size, 2, 64)
    outs, caches = [], []
    for cls in (TorchAttentionBackend, CpuAttentionBackend):
        k_cache, v_cache, kv_scales = cache[0].clone(), cache[1].clone(), None
        if kind == "fp8":
            (k_cache, ks), (v_cache, vs) = quantize_fp8(k_cache), quantize_fp8(v_cache)  # NaN rows: NaN scales
            kv_scales = KVScales(ks, vs)
        backend = cls(8, 2, 64, block_size, dtype)
        backend.prepare(meta)
        outs.append(backend.forward(q, k, v, k_cache, v_cache, meta, 0.125, kv_scales))
        stored = (k_cache, v_cache, kv_scales.k, kv_scales.v) if kv_scales else (k_cache, v_cache)
        caches.append([c.view(torch.uint8) for c in stored])  # bytes: NaN rows compare equal
    for got, want in zip(caches[1], caches[0]):
        assert torch.equal(got, want)
    assert torch.isfinite(outs[1]).all()
    tolerance = 2e-2 if kind == "bfloat16" else 1e-5
    assert torch.allclose(outs[1].float(), outs[0].float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_batches_with_prefix_hits_match_transformers(checkpoints, arch):
    """Steps that mix decode rows with prompt chunks over cached (and prefix-cached) context."""
    path = checkpoints[arch]
    prefix = random_prompts(1, 40, 40, seed=2)[0]
    prompts = [prefix + tail for tail in random_prompts(5, 1, 50, seed=3)] + random_prompts(3, 1, 9, seed=4)
    llm = LLM(
        path,
        attention_backend="cpu",
        scheduler="chunked",
        max_num_batched_tokens=32,
        kvcache_block_size=16,
        max_model_len=256,
        dtype="float32",
    )
    assert llm.engine.executor.runner.attn_backend.__class__ is CpuAttentionBackend
    assert [o["tokens"] for o in llm.generate(prompts, GREEDY, use_tqdm=False)] == hf_greedy(path, prompts, 12)


def test_fp8_tokens_equal_the_torch_backends(llama_path):
    prompts = random_prompts(6, 3, 60, seed=5)
    tokens = {}
    for name in ("torch", "cpu"):
        llm = LLM(
            llama_path,
            attention_backend=name,
            kv_cache_dtype="fp8",
            scheduler="chunked",
            max_num_batched_tokens=40,
            kvcache_block_size=16,
            max_model_len=256,
            dtype="float32",
        )
        tokens[name] = [o["tokens"] for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    assert tokens["cpu"] == tokens["torch"]
