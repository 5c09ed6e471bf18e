"""One arm's run in a process of its own: ``python -m minivllm.bench.worker SPEC.json RESULT.json``.

Modes (``spec["mode"]``):

- ``check``: validate every request of the workload, then generate greedily for the first few
  prompts (the output cross-check). Reports the tokens, the dtype, the device and the KV blocks.
- ``time``: one warm-up on prompts unrelated to the workload (so no prefix-cache hits carry over),
  then the timed run: every request added at once, the engine stepped until done, each sequence's
  first and last token timestamped (``step()`` returns the sequences that got a token; on CUDA its
  tokens reach the host inside ``step()``, so a timestamp after it is after the GPU work).

Progress goes to stdout as one ``done N`` line whenever N more requests finished.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time

CHECK_MAX_TOKENS = 32  # greedy tokens per cross-check prompt
WARMUP_PROMPTS, WARMUP_TOKENS = 8, 8


def report_done(n: int) -> None:
    if n:
        print(f"done {n}", flush=True)


def run(engine, prompts: list[list[int]], params: list, progress: bool = True) -> tuple[list, float, dict, dict]:
    """Generate for every prompt at once. Returns the sequences, the wall time, and per sequence id the
    times of its first and last token (seconds from the start)."""
    seqs = [engine.make_sequence(p, sp) for p, sp in zip(prompts, params)]
    first, last = {}, {}
    start = time.perf_counter()
    for seq in seqs:
        engine.add(seq)
    while engine.has_unfinished():
        updated = engine.step()
        now = time.perf_counter() - start
        for seq in updated:
            first.setdefault(seq.seq_id, now)
            last[seq.seq_id] = now
        if progress:
            report_done(sum(seq.is_finished for seq in updated))
    return seqs, time.perf_counter() - start, first, last


def peak_memory_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def check(engine, spec: dict, prompts: list[list[int]], max_tokens: list[int]) -> dict:
    from minivllm.core.sampling_params import SamplingParams

    for i, (p, m) in enumerate(zip(prompts, max_tokens)):
        try:
            engine.make_sequence(p, SamplingParams(max_tokens=m))
        except ValueError as e:
            raise ValueError(f"request {i} of the workload: {e}") from None
    n = spec["check_prompts"]
    params = [
        SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=min(m, CHECK_MAX_TOKENS)) for m in max_tokens[:n]
    ]
    seqs, *_ = run(engine, prompts[:n], params)
    return {"tokens": [seq.output_token_ids for seq in seqs]}


def timed(engine, spec: dict, prompts: list[list[int]], max_tokens: list[int]) -> dict:
    import torch

    from minivllm.core.sampling_params import SamplingParams

    device = engine.config.torch_device
    rng = random.Random(-1)
    warm = [[rng.randrange(engine.vocab_size) for _ in range(len(p))] for p in prompts[:WARMUP_PROMPTS]]
    sampling = {**spec["sampling"], "structured_outputs": spec.get("structured_output")}
    run(
        engine,
        warm,
        [SamplingParams(**sampling, ignore_eos=True, max_tokens=WARMUP_TOKENS)] * len(warm),
        progress=False,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    preemptions = engine.scheduler.num_preemptions
    params = [SamplingParams(**sampling, ignore_eos=True, max_tokens=m) for m in max_tokens]
    seqs, wall, first, last = run(engine, prompts, params)
    output_tokens = sum(seq.num_output_tokens for seq in seqs)
    return {
        "wall_s": wall,
        "output_tokens": output_tokens,
        "prompt_tokens": sum(seq.num_prompt_tokens for seq in seqs),
        "ttft_s": [first[seq.seq_id] for seq in seqs],
        # time per output token after the first; sequences of one token have none
        "tpot_s": [
            (last[s.seq_id] - first[s.seq_id]) / (s.num_output_tokens - 1) for s in seqs if s.num_output_tokens > 1
        ],
        "preemptions": engine.scheduler.num_preemptions - preemptions,
        "peak_memory_bytes": peak_memory_bytes(device),
    }


def main(spec_path: str, result_path: str) -> None:
    from minivllm.core.config import EngineConfig
    from minivllm.core.engine import LLMEngine

    with open(spec_path) as f:
        spec = json.load(f)
    with open(spec["workload"]) as f:
        workload = json.load(f)
    prompts, max_tokens = workload["prompts"], workload["max_tokens"]
    engine = LLMEngine(EngineConfig(**spec["config"]))
    try:
        result = (
            check(engine, spec, prompts, max_tokens)
            if spec["mode"] == "check"
            else timed(engine, spec, prompts, max_tokens)
        )
        device = engine.config.torch_device
        result.update(
            dtype=str(engine.executor.runner.dtype).removeprefix("torch."),
            device=device_name(device),
            attention_backend=engine.config.resolved_attention_backend,
            kv_blocks=engine.allocator.num_blocks,
        )
    finally:
        engine.close()
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except ValueError as e:  # a bad request or config: the message says it all
        sys.exit(f"error: {e}")
