"""The engine on CUDA through the Triton backend with CUDA graphs: greedy parity with transformers in
float32 (mixed lengths, prefix hits, preemption, chunked prefill), a bf16 Qwen3-0.6B-shaped agreement
rate, and memory sizing that keeps this process within ``gpu_memory_utilization``."""

import pytest
import torch

from minivllm import LLM, SamplingParams
from tests.checkpoints import hf_greedy, random_prompts
from tests.conftest import ARCHS

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
CUDA = dict(device="cuda", attention_backend="triton", dtype="float32", gpu_memory_utilization=0.3)


def _generate(llm, prompts, params=GREEDY):
    return [out["tokens"] for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block_size", [16, 256])
def test_parity_with_graphs(checkpoints, arch, block_size):
    path = checkpoints[arch]
    llm = LLM(path, kvcache_block_size=block_size, max_model_len=512, max_num_seqs=24, **CUDA)
    assert llm.engine.executor.runner.graphs is not None
    prompts = random_prompts(20, 3, 90, seed=1)  # 20 sequences: replays the graph of 24, padded
    assert _generate(llm, prompts) == hf_greedy(path, prompts, GREEDY.max_tokens, device="cuda")
    prefix = random_prompts(1, 40, 40, seed=2)[0]
    shared = [prefix + tail for tail in random_prompts(4, 1, 20, seed=3)]
    expected = hf_greedy(path, shared, GREEDY.max_tokens, device="cuda")
    assert _generate(llm, shared[:1]) == expected[:1]
    assert _generate(llm, shared) == expected  # prefix hits: prefill over cached blocks


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption_and_chunked_prefill(checkpoints, arch, async_scheduling):
    path = checkpoints[arch]
    prompts = random_prompts(8, 20, 60, seed=4)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    expected = hf_greedy(path, prompts, params.max_tokens, device="cuda")
    settings = dict(kvcache_block_size=16, max_model_len=512, async_scheduling=async_scheduling, **CUDA)
    llm = LLM(path, num_kvcache_blocks=12, **settings)
    assert _generate(llm, prompts, params) == expected
    assert llm.engine.scheduler.num_preemptions > 0
    # chunks of 32 tokens mixed with decode tokens: the general (non-graph) Triton kernel
    llm = LLM(path, scheduler="chunked", max_num_batched_tokens=32, **settings)
    assert _generate(llm, prompts, params) == expected
    # the fused sampler (greedy rows: the kernel's argmax) and the fp8 cache keep the step pipeline intact
    llm = LLM(path, sampler="fused", kv_cache_dtype="fp8", num_kvcache_blocks=24, **settings)
    fp8 = _generate(llm, prompts, params)
    assert fp8 == _generate(LLM(path, kv_cache_dtype="fp8", num_kvcache_blocks=24, **settings), prompts, params)


def test_eager_matches_graphs(checkpoints):
    path = checkpoints["qwen3"]
    prompts = random_prompts(5, 3, 50, seed=5)
    eager = LLM(path, kvcache_block_size=16, max_model_len=512, enforce_eager=True, **CUDA)
    assert eager.engine.executor.runner.graphs is None
    graphs = LLM(path, kvcache_block_size=16, max_model_len=512, **CUDA)
    assert _generate(eager, prompts) == _generate(graphs, prompts)


def test_bf16_qwen3_first_tokens_and_memory_budget(tmp_path):
    """A Qwen3-0.6B-shaped checkpoint with random bf16 weights: the first generated token agrees with
    transformers' for most prompts (bf16 rounding flips near-ties); the KV cache is sized so that this
    process's peak stays within ``gpu_memory_utilization`` of the device."""
    import gc

    import transformers

    from minivllm.bench.shapes import SHAPES

    config = transformers.Qwen3Config(**SHAPES["qwen3-0.6b"][1], dtype="bfloat16")
    config.architectures = ["Qwen3ForCausalLM"]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.05)  # wider than the default init, so logits are not all near-ties
    model.save_pretrained(tmp_path)
    prompts = random_prompts(48, 5, 300, vocab=10000, seed=7)
    with torch.no_grad():
        expected = [int(model(torch.tensor([p], device="cuda")).logits[0, -1].argmax()) for p in prompts]
    del model
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    before = total - free - torch.cuda.memory_reserved()  # other processes, CUDA context
    torch.cuda.reset_peak_memory_stats()
    # a 32 GiB budget on any card: 512 sequences of 1024 tokens would need ~58 GB, so the cache is budget-bound
    utilization = min(0.5, 32 * 2**30 / total)
    llm = LLM(
        str(tmp_path), max_model_len=1024, device="cuda", attention_backend="triton", gpu_memory_utilization=utilization
    )
    got = [t[0] for t in _generate(llm, prompts, SamplingParams(temperature=0.0, max_tokens=1))]
    rate = sum(a == b for a, b in zip(got, expected)) / len(prompts)
    print(f"bf16 Qwen3-0.6B-shaped: first token agrees with transformers for {rate:.0%} of {len(prompts)} prompts")
    assert rate >= 0.75
    # the cache is budget-bound, and a full-size decode batch with sampling stays within the budget
    assert llm.engine.allocator.num_blocks < 512 * 4
    _generate(llm, random_prompts(512, 10, 200, vocab=10000, seed=8), SamplingParams(temperature=0.8, max_tokens=4))
    free, total = torch.cuda.mem_get_info()
    peak = total - free - before - torch.cuda.memory_reserved() + torch.cuda.max_memory_reserved()
    print(f"process peak {peak / 2**30:.2f} GiB of budget {utilization * total / 2**30:.2f} GiB")
    assert peak <= utilization * total
