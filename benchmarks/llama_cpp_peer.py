"""llama.cpp as a peer on the CPU: its own benchmark tools, run as subprocesses on the same GGUF file.

The tools are built from source by ``scripts/build_llama_cpp.sh`` (never in CI) into a folder passed as
``--llama-cpp BIN_DIR`` to ``benchmarks/cpu.py`` (speed) and ``benchmarks/kv_quality.py`` (perplexity).

- Speed: ``llama-batched-bench`` with N parallel streams of a P-token prompt and T new tokens, timed by the
  tool itself (prefill and decode apart; the model's load and its warm-up are not timed). It feeds random
  token ids and does not sample, so it times the model and llama.cpp's batch bookkeeping, no sampler and
  no detokeniser: a little less work per step than ``LLM.generate`` does.
- Quality: ``llama-perplexity``, which cuts the text's tokens into windows of ``n_ctx`` (the last partial one
  dropped), evaluates each window from an empty cache and scores only its second half (each of the tokens
  at positions ``n_ctx/2 + 1 .. n_ctx - 1`` given all the window's tokens before it); ``window_targets``
  says which tokens that is, so that minivllm's perplexity can be computed over the same windows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess


def tool(bin_dir: str, name: str) -> str:
    path = os.path.join(bin_dir, name)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{path} is missing: build it with scripts/build_llama_cpp.sh")
    return path


def batched_bench(bin_dir: str, model: str, threads: int, prompt_len: int, new_tokens: int, streams: int) -> dict:
    """One ``llama-batched-bench`` run: {"t_pp", "t_tg", "t"} in seconds and its speeds (its JSONL line)."""
    ctx = streams * (prompt_len + new_tokens) + 16
    cmd = [
        tool(bin_dir, "llama-batched-bench"),
        "-m",
        model,
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-c",
        str(ctx),
        "-npp",
        str(prompt_len),
        "-ntg",
        str(new_tokens),
        "-npl",
        str(streams),
        "--output-format",
        "jsonl",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = [line for line in out.stdout.splitlines() + out.stderr.splitlines() if line.startswith('{"n_kv_max"')]
    if len(lines) != 1:
        raise RuntimeError(f"no result line from {' '.join(cmd)}:\n{out.stderr[-2000:]}")
    return json.loads(lines[0])


def window_targets(num_tokens: int, n_ctx: int) -> list[tuple[int, int]]:
    """(window start, first scored position in it) of every window ``llama-perplexity -c n_ctx`` scores: a
    window's tokens are ``tokens[start : start + n_ctx]``; positions ``first .. n_ctx - 2`` predict the next."""
    return [(i * n_ctx, n_ctx // 2) for i in range(num_tokens // n_ctx)]


def perplexity(bin_dir: str, model: str, text_file: str, n_ctx: int, threads: int) -> dict:
    """``llama-perplexity`` of a text file: {"ppl", "stderr", "tokens" (chunks x scored per chunk)}."""
    cmd = [
        tool(bin_dir, "llama-perplexity"),
        "-m",
        model,
        "-f",
        text_file,
        "-c",
        str(n_ctx),
        "-b",
        str(n_ctx),
        "-t",
        str(threads),
        "-tb",
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
    chunks = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", log)
    if not final or not chunks:
        raise RuntimeError(f"no perplexity in the output of {' '.join(cmd)}:\n{log[-2000:]}")
    scored = int(chunks.group(1)) * (n_ctx - n_ctx // 2 - 1)
    return dict(ppl=float(final.group(1)), stderr=float(final.group(2)), chunks=int(chunks.group(1)), tokens=scored)
