"""Where one stream's decode step goes on the CPU: the model's linears against everything else a step does.

One greedy chat stream of the embedded SmolLM2-135M through ``LLM.generate``; every part of a step is timed
with ``perf_counter`` around it (wrapping the method, so what runs is the engine's own code; the wrappers
cost about 0.3 µs a call, ~150 calls a step): the scheduler, ``prepare`` (host lists to tensors and the
attention backend's metadata), the model's forward and inside it the linears, attention, RMSNorm, rotary,
SiLU-and-mul and the embedding, then the LM head, sampling (with logprobs and the sampler's batch), and the
engine's bookkeeping after the step (appending, stop checks, detokenising). "layers' Python and small
ops" is the forward's time that none of the wrapped modules took: the decoder layers' own code, residual
adds, reshapes. The prefill step is left out; the figures are means over the decode steps.

    python benchmarks/profile_cpu_step.py [--quantization gguf] [--tokens 128] [--threads 2]

torch's profiler was not used: on this CPU its per-op times were off by up to 10x (RESULTS.md, 2026-12-04).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections import defaultdict

import torch

MODEL_PARTS = {  # label -> (module, class) whose ``forward`` it times, inside the model's forward
    "linears: q/k/v, gate/up": ("minivllm.layers.linear", "_Linear"),
    "linears: o, down": ("minivllm.layers.linear", "RowParallelLinear"),
    "attention": ("minivllm.core.interfaces.attention", "Attention"),
    "RMSNorm (with the residual add)": ("minivllm.layers.norm", "RMSNorm"),
    "rotary": ("minivllm.layers.rotary", "RotaryEmbedding"),
    "SiLU and mul": ("minivllm.layers.activation", "SiluAndMul"),
    "embedding lookup": ("minivllm.layers.embedding", "VocabParallelEmbedding"),
}


class Timers:
    """Seconds per label, one dict per engine step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def wrap(self, owner, name: str, label: str) -> None:
        method = getattr(owner, name)

        @functools.wraps(method)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if self.steps:
                    self.steps[-1][label] += time.perf_counter() - start

        setattr(owner, name, timed)

    def new_step(self) -> None:
        self.steps.append(defaultdict(float))


def main() -> None:
    import importlib

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantization", default="gguf", choices=["none", "gguf"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: minivllm's rule)")
    args = parser.parse_args()
    if args.threads:  # through the environment: minivllm then skips its idle-core rule (core/cpu.py)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    from minivllm import LLM, SamplingParams

    llm = LLM(quantization=args.quantization, max_model_len=1024, max_num_seqs=16)
    engine, runner = llm.engine, llm.engine.executor.runner
    timers = Timers()
    for label, (module, cls) in MODEL_PARTS.items():
        timers.wrap(getattr(importlib.import_module(module), cls), "forward", label)
    host = {
        "scheduler": (engine.scheduler, "schedule"),
        "prepare": (runner, "prepare"),
        "attention metadata (backend prepare)": (runner.attn_backend, "prepare"),
        "LM head": (runner.model.lm_head, "forward"),
        "sampler": (runner.sampler, "sample"),
        "bookkeeping, stop checks, detokenising": (engine, "_collect"),
    }
    for label, (owner, name) in host.items():
        timers.wrap(owner, name, label)
    timers.wrap(runner, "_forward", "forward")
    step = engine.step

    def timed_step():
        timers.new_step()
        start = time.perf_counter()
        try:
            return step()
        finally:
            timers.steps[-1]["step"] += time.perf_counter() - start

    engine.step = timed_step
    prompt = [{"role": "user", "content": "Write a short story about a cat who learns to fly."}]
    greedy = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    llm.chat([prompt], greedy, use_tqdm=False)  # warm-up
    timers.steps.clear()
    start = time.perf_counter()
    llm.chat([prompt], greedy, use_tqdm=False)
    wall = time.perf_counter() - start
    decode = timers.steps[1:]  # the first step is the prompt's prefill
    mean = {label: sum(s[label] for s in decode) / len(decode) * 1000 for label in decode[0]}
    step_ms = mean["step"]
    model_ms = mean["forward"] - mean["attention metadata (backend prepare)"]  # _forward runs the backend's
    rows = [(label, mean[label]) for label in MODEL_PARTS]
    rows.append(("layers' Python and small ops (the rest of the forward)", model_ms - sum(ms for _, ms in rows)))
    rows += [(label, mean[label]) for label in host]
    rows.append(
        (
            "the step's other work (logits' dtype, logprobs, the sampler's batch, Python)",
            step_ms - model_ms - sum(mean[label] for label in host),
        )
    )
    print(
        f"quantization={args.quantization}, {torch.get_num_threads()} threads: {len(decode)} decode steps, "
        f"{step_ms:.2f} ms per step ({1000 / step_ms:.1f} steps/s); LLM.chat {args.tokens / wall:.1f} tok/s"
    )
    print("| part of a decode step | ms | share |\n| --- | ---: | ---: |")
    for label, ms in rows:
        print(f"| {label} | {ms:.3f} | {100 * ms / step_ms:.1f}% |")
    print(
        f"| (the model's forward: the first {len(MODEL_PARTS) + 1} rows) | {model_ms:.3f} "
        f"| {100 * model_ms / step_ms:.1f}% |"
    )


if __name__ == "__main__":
    main()
