"""Where a step's time goes: wall time per prefill and decode step, and the top GPU kernels of each.

    python benchmarks/profile_steps.py [--num-seqs 256]   # Qwen3-0.6B shape, dummy bf16 weights
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.throughput import workload, write_config
from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.sampling_params import SamplingParams


def timed_steps(engine, n: int) -> list[float]:
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def wrap(obj, method: str, phases: dict, name: str) -> None:
    """Add the host time of each call of ``obj.method`` to ``phases[name]``."""
    inner = getattr(obj, method)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            phases[name] += time.perf_counter() - start

    setattr(obj, method, timed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--scheduler", default="fcfs")
    args = parser.parse_args()
    prompts, max_tokens = workload(args.num_seqs, 1024, 1024)
    with tempfile.TemporaryDirectory() as path:
        write_config("qwen3-0.6b", path)
        engine = LLMEngine(EngineConfig(model=path, load_format="dummy", max_model_len=4096, scheduler=args.scheduler))
        for p, m in zip(prompts, max_tokens):
            engine.add(engine.make_sequence(p, SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=m)))
        prefill = []
        while engine.scheduler.waiting:
            prefill += timed_steps(engine, 1)
        print(f"prefill: {len(prefill)} steps, {sum(prefill):.3f} s: " + " ".join(f"{t * 1e3:.0f}" for t in prefill) + " ms")
        decode = timed_steps(engine, 30)
        print(f"decode (batch {len(engine.scheduler.running)}): median {sorted(decode)[15] * 1e3:.2f} ms per step")
        phases = {name: 0.0 for name in ("schedule", "prepare", "graph launch", "sampler launch", "sync")}
        wrap(engine.scheduler, "schedule", phases, "schedule")
        wrap(engine.runner, "prepare", phases, "prepare")
        wrap(engine.runner.graphs, "run", phases, "graph launch")
        wrap(engine.runner.sampler, "sample", phases, "sampler launch")
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(30):
            engine.step()
        torch.cuda.synchronize()
        step = (time.perf_counter() - start) / 30
        print(f"decode step {step * 1e3:.2f} ms (no sync between steps): "
              + ", ".join(f"{k} {v / 30 * 1e3:.2f}" for k, v in phases.items() if k != "sync")
              + f" ms; the rest (waiting on the GPU, engine bookkeeping) "
              f"{(step - sum(phases.values()) / 30) * 1e3:.2f} ms")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            timed_steps(engine, 10)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
