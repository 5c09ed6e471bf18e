"""Where a decode step's time goes: wall time per step, the GPU's busy time per step (every kernel and
copy, from a profile), and the difference, the time the GPU waits for the host; then the top kernels.

    python benchmarks/profile_steps.py [--model qwen3-0.6b] [--num-seqs 256] [--async-scheduling false]
                                       [--sampler fused] [--tensor-parallel-size 2]

A model shape of benchmarks/throughput.py with dummy bf16 weights, nano-vllm's workload prefilled, then
decode steps timed without a sync between them (as the engine runs them). With async scheduling the host
plans step N+1 while the GPU runs step N, so the idle time should be near zero. With tensor parallelism
the profile is rank 0's, and the time its all-reduce kernels take per step is reported too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.throughput import workload
from minivllm.bench.shapes import write_config
from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.sampling_params import SamplingParams


def steps_per_second(engine, n: int) -> float:
    """Wall time per step over ``n`` steps run back to back (synced at both ends only)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        engine.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen3-0.6b")
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--scheduler", default="fcfs")
    parser.add_argument("--sampler", default="default")
    parser.add_argument("--async-scheduling", default="true", choices=["true", "false"])
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    prompts, max_tokens = workload(args.num_seqs, 1024, 1024)
    with tempfile.TemporaryDirectory() as path:
        write_config(args.model, path)
        engine = LLMEngine(
            EngineConfig(
                model=path,
                load_format="dummy",
                max_model_len=4096,
                scheduler=args.scheduler,
                sampler=args.sampler,
                async_scheduling=args.async_scheduling == "true",
                kv_cache_dtype=args.kv_cache_dtype,
                tensor_parallel_size=args.tensor_parallel_size,
            )
        )
        for p, m in zip(prompts, max_tokens):
            engine.add(engine.make_sequence(p, SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m)))
        torch.cuda.synchronize()
        start, prefill = time.perf_counter(), 0
        while engine.scheduler.waiting:
            engine.step()
            prefill += 1
        torch.cuda.synchronize()
        print(f"prefill: {prefill} steps, {time.perf_counter() - start:.3f} s")
        steps_per_second(engine, 5)  # settle: the last prefill's tokens arrive, decode graphs warm
        wall = steps_per_second(engine, args.steps)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            steps_per_second(engine, args.steps)
        events = prof.key_averages()
        busy = sum(e.self_device_time_total for e in events) / 1e6 / args.steps  # seconds of device work per step
        all_reduce = sum(e.self_device_time_total for e in events if "allreduce" in e.key.lower()) / 1e6 / args.steps
        batch = len(engine.scheduler.running)
        print(
            f"{args.model} decode, batch {batch}: {wall * 1e3:.2f} ms per step; GPU busy {busy * 1e3:.2f} ms "
            f"(all-reduce {all_reduce * 1e3:.2f} ms); GPU idle {(wall - busy) * 1e3:.2f} ms per step"
        )
        print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=70))
        print(
            json.dumps(
                dict(
                    model=args.model,
                    batch=batch,
                    wall_ms=wall * 1e3,
                    gpu_busy_ms=busy * 1e3,
                    gpu_idle_ms=(wall - busy) * 1e3,
                    all_reduce_ms=all_reduce * 1e3,
                    async_scheduling=engine.async_scheduling,
                    sampler=args.sampler,
                    kv_cache_dtype=args.kv_cache_dtype,
                    tensor_parallel_size=args.tensor_parallel_size,
                )
            )
        )
        engine.close()


if __name__ == "__main__":
    main()
