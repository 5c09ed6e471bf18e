"""Offline throughput on nano-vllm's ``bench.py`` workload, beside transformers and the bandwidth floor.

Workload (as nano-vllm): ``random.seed(0)``; 256 sequences; prompts of ``randint(100, 1024)`` random
token ids in [0, 10000]; ``max_tokens = randint(100, 1024)``; temperature 0.6, ``ignore_eos``;
``max_model_len=4096``; one warm-up call; throughput = sum(max_tokens) / wall time.

The model is built from a configuration alone (``load_format="dummy"``: random bf16 weights), so no
weights or tokenizer are needed. Usage (on a GPU machine):

    python benchmarks/throughput.py --model qwen3-0.6b --hf-prompts 32
    python benchmarks/throughput.py --model llama3-8b --num-seqs 64 --hf-prompts 0
    python benchmarks/throughput.py --model llama3-8b --num-seqs 64 --hf-prompts 0 --quantization fp8

Prints one JSON line per run (``--json FILE`` appends it there too).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time

import torch

from minivllm.bench.report import emit_json_line
from minivllm.bench.shapes import SHAPES, write_config


def workload(num_seqs: int, max_input: int, max_output: int) -> tuple[list[list[int]], list[int]]:
    random.seed(0)
    prompts = [[random.randint(0, 10000) for _ in range(random.randint(100, max_input))] for _ in range(num_seqs)]
    max_tokens = [random.randint(100, max_output) for _ in range(num_seqs)]
    return prompts, max_tokens


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of 20 copies of 1 GiB."""
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    y = torch.empty_like(x)
    times = []
    for _ in range(22):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del x, y
    return 2 * 2**30 / statistics.median(times[2:])


def floor_bytes(config, prompts, max_tokens, weight_bytes: int, kv_bytes_per_element: float = 2) -> float:
    """Bytes decode must move at least: each sequence's whole KV cache every step, plus the weights
    once per step (steps >= the longest output). The KV cache counts ``kv_bytes_per_element`` (2 for bf16;
    with fp8 1 + 4 / head_dim: the per-row scale). With tensor parallelism every rank moves its share, so
    the floor of N ranks is this over N ranks' bandwidth."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * kv_bytes_per_element
    kv = sum(per_token * (m * len(p) + m * (m + 1) // 2) for p, m in zip(prompts, max_tokens))
    return kv + max(max_tokens) * weight_bytes


def run_minivllm(path, prompts, max_tokens, args) -> dict:
    from minivllm.core.config import EngineConfig
    from minivllm.core.engine import LLMEngine
    from minivllm.core.sampling_params import SamplingParams

    extra = {"scheduler": args.scheduler} if args.scheduler else {}
    if args.sampler:
        extra["sampler"] = args.sampler
    if args.async_scheduling:
        extra["async_scheduling"] = args.async_scheduling == "true"
    config = EngineConfig(
        model=path,
        load_format="dummy",
        max_model_len=4096,
        enforce_eager=args.enforce_eager,
        attention_backend=args.attention_backend,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_dtype=args.kv_cache_dtype,
        quantization=args.quantization,
        tensor_parallel_size=args.tensor_parallel_size,
        **extra,
    )
    start = time.perf_counter()
    engine = LLMEngine(config)
    startup = time.perf_counter() - start
    # every rank's share: the whole model's weights (ranks hold equal shares, replicated parts aside); fp8
    # weights are buffers (layers/fp8_linear.py), as is the small rotary table
    model = engine.executor.runner.model
    weight_bytes = args.tensor_parallel_size * sum(
        t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())
    )

    def generate(token_lists, params):
        seqs = [engine.make_sequence(t, p) for t, p in zip(token_lists, params)]
        for seq in seqs:
            engine.add(seq)
        t0, first, last = time.perf_counter(), {}, {}
        while engine.has_unfinished():
            updated = engine.step()
            now = time.perf_counter()
            for seq in updated:
                first.setdefault(seq.seq_id, now)
                last[seq.seq_id] = now
        wall = time.perf_counter() - t0
        ttft = [first[s.seq_id] - t0 for s in seqs]
        tpot = [(last[s.seq_id] - first[s.seq_id]) / max(1, s.num_output_tokens - 1) for s in seqs]
        return seqs, wall, ttft, tpot

    generate([[1, 2, 3]], [SamplingParams(max_tokens=8)])  # warm-up
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m) for m in max_tokens]
    seqs, wall, ttft, tpot = generate(prompts, params)
    assert [s.num_output_tokens for s in seqs] == max_tokens
    result = dict(
        wall_s=wall,
        startup_s=startup,
        weight_bytes=weight_bytes,
        num_blocks=engine.allocator.num_blocks,
        preemptions=engine.scheduler.num_preemptions,
        ttft_median_s=statistics.median(ttft),
        tpot_median_ms=1e3 * statistics.median(tpot),
        async_scheduling=engine.async_scheduling,
    )
    engine.close()
    return result


def run_transformers(config, prompts, max_tokens, batch: int) -> dict:
    """transformers ``generate()`` as a user would batch it: ``batch`` prompts per call, left padding,
    each call generating the batch's longest ``max_tokens``; counts only the requested tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device="cuda")
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device="cuda")
        n = max(max_tokens[i : i + batch])
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=0.6,
                top_k=0,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
            )
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()
    return dict(hf_wall_s=wall, hf_tokens=sum(max_tokens), hf_tok_s=sum(max_tokens) / wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen3-0.6b", choices=sorted(SHAPES))
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--max-input", type=int, default=1024)
    parser.add_argument("--max-output", type=int, default=1024)
    parser.add_argument("--hf-prompts", type=int, default=32, help="prompts the transformers peer runs (0: skip)")
    parser.add_argument("--hf-batch", type=int, default=32)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--async-scheduling", choices=["true", "false"], default=None, help="default: the engine's")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    parser.add_argument("--quantization", default="none", choices=["none", "fp8"], help="fp8: fp8 linear weights")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--json", default=None, help="append the result line to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    prompts, max_tokens = workload(args.num_seqs, args.max_input, args.max_output)
    out_tokens, in_tokens = sum(max_tokens), sum(map(len, prompts))
    with tempfile.TemporaryDirectory() as path:
        config = write_config(args.model, path)
        result = dict(
            model=args.model,
            device=torch.cuda.get_device_name(),
            num_seqs=args.num_seqs,
            output_tokens=out_tokens,
            prompt_tokens=in_tokens,
            scheduler=args.scheduler or "fcfs",
            sampler=args.sampler or "default",
            enforce_eager=args.enforce_eager,
            kv_cache_dtype=args.kv_cache_dtype,
            quantization=args.quantization,
            tensor_parallel_size=args.tensor_parallel_size,
        )
        if args.hf_prompts:
            n = args.hf_prompts
            result.update(run_transformers(config, prompts[:n], max_tokens[:n], args.hf_batch))
        result.update(run_minivllm(path, prompts, max_tokens, args))
    result["tok_s"] = out_tokens / result["wall_s"]
    result["total_tok_s"] = (out_tokens + in_tokens) / result["wall_s"]
    bandwidth = copy_bandwidth() * args.tensor_parallel_size  # each rank reads its share from its own GPU
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_bytes = 1 + 4 / head_dim if args.kv_cache_dtype == "fp8" else 2
    floor_s = floor_bytes(config, prompts, max_tokens, result["weight_bytes"], kv_bytes) / bandwidth
    result.update(
        copy_tb_s=bandwidth / 1e12,
        floor_s=floor_s,
        floor_tok_s=out_tokens / floor_s,
        achieved_over_floor=floor_s / result["wall_s"],
    )
    if args.hf_prompts:
        result["over_hf"] = result["tok_s"] / result["hf_tok_s"]
    print(
        f"{args.model}: {out_tokens} output tokens in {result['wall_s']:.2f} s = {result['tok_s']:.0f} tok/s "
        f"({result['total_tok_s']:.0f} total tok/s); TTFT median {result['ttft_median_s']:.2f} s, "
        f"TPOT median {result['tpot_median_ms']:.1f} ms"
    )
    print(
        f"floor: {floor_s:.2f} s at {bandwidth / 1e12:.2f} TB/s copy = {result['floor_tok_s']:.0f} tok/s; "
        f"achieved / floor = {result['achieved_over_floor']:.2f}"
        + (
            f"; transformers {result['hf_tok_s']:.0f} tok/s ({args.hf_prompts} prompts), "
            f"minivllm / HF = {result['over_hf']:.1f}x"
            if args.hf_prompts
            else ""
        )
    )
    emit_json_line(result, args.json)


if __name__ == "__main__":
    main()
