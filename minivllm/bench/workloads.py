"""Benchmark workloads: seeded, reproducible lists of requests (token-id prompts and output lengths).

Synthetic workloads draw prompt tokens uniformly from ``[0, min(vocab_size, 10000))`` (as nano-vllm's
bench) and lengths uniformly from their ranges:

============== ================================ ================ ===========================================
workload       prompt tokens                    output tokens    what it stresses
============== ================================ ================ ===========================================
random         100-1024                         100-1024         everything (nano-vllm's bench; the default)
shared-prefix  one 1024-token system prompt     64-256           prefix caching: every request shares the
               + 16-128 of its own                               system prompt's KV blocks
prefill-heavy  1024-2048                        8-32             prefill (attention over long prompts)
decode-heavy   16-64                            512-1024         decode (many small steps)
============== ================================ ================ ===========================================

``max_input_len`` / ``max_output_len`` scale a range down proportionally when its top is above the
cap (``random`` with ``max_input_len=64``: 6-64 prompt tokens), so CPU runs finish in seconds.

``file:PATH.jsonl`` reads one request per line: ``{"prompt": "text" or [token ids], "max_tokens": N}``;
text prompts are tokenized with the model's tokenizer; ``num_prompts`` takes the first lines (default:
all); ``max_output_len`` caps ``max_tokens``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

DEFAULT_NUM_PROMPTS = 256  # nano-vllm's bench


@dataclass(frozen=True)
class Spec:
    input_range: tuple[int, int]  # tokens of each request's own prompt part
    output_range: tuple[int, int]
    prefix_len: int = 0  # tokens of a system prompt shared by every request


WORKLOADS = {
    "random": Spec((100, 1024), (100, 1024)),
    "shared-prefix": Spec((16, 128), (64, 256), prefix_len=1024),
    "prefill-heavy": Spec((1024, 2048), (8, 32)),
    "decode-heavy": Spec((16, 64), (512, 1024)),
}


@dataclass
class Request:
    prompt: list[int] | str
    max_tokens: int


def scaled(lo: int, hi: int, factor: float) -> tuple[int, int]:
    return max(1, int(lo * factor)), max(1, int(hi * factor))


def check_name(name: str) -> None:
    if name not in WORKLOADS and not name.startswith("file:"):
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)} or file:PATH.jsonl")
    if name.startswith("file:") and not os.path.isfile(path := name.removeprefix("file:")):
        raise ValueError(f"workload file {path!r} does not exist")


def input_factor(spec: Spec, max_input_len: int | None) -> float:
    """How much ``max_input_len`` scales the workload's prompt lengths down (1: not at all)."""
    return min(1.0, max_input_len / (spec.prefix_len + spec.input_range[1])) if max_input_len else 1.0


def short_prefix_note(name: str, max_input_len: int | None, block_size: int) -> str | None:
    """What to tell the user when the shared system prompt is shorter than one KV block: the prefix cache
    shares only full blocks, so it can change nothing on this workload. None when the prefix fills a block."""
    spec = WORKLOADS.get(name)
    if spec is None or not spec.prefix_len:
        return None
    prefix = int(spec.prefix_len * input_factor(spec, max_input_len))
    if prefix >= block_size:
        return None
    return (
        f"workload {name!r}: the shared prompt is {prefix} tokens, shorter than one KV block ({block_size} "
        "tokens), and the prefix cache shares only full blocks, so prefix caching can show nothing here: raise "
        "--max-input-len or lower kvcache_block_size (--set kvcache_block_size=16)"
    )


def make_workload(
    name: str,
    num_prompts: int | None = None,
    vocab_size: int = 10000,
    seed: int = 0,
    max_input_len: int | None = None,
    max_output_len: int | None = None,
) -> list[Request]:
    """The requests of workload ``name`` (see the module docstring); raises ValueError naming a problem."""
    check_name(name)
    if num_prompts is not None and num_prompts < 1:
        raise ValueError(f"num_prompts must be at least 1, got {num_prompts}")
    if name.startswith("file:"):
        return read_jsonl(name.removeprefix("file:"), num_prompts, max_output_len)
    spec = WORKLOADS[name]
    n = num_prompts or DEFAULT_NUM_PROMPTS
    in_factor = input_factor(spec, max_input_len)
    out_factor = min(1.0, max_output_len / spec.output_range[1]) if max_output_len else 1.0
    in_lo, in_hi = scaled(*spec.input_range, in_factor)
    out_lo, out_hi = scaled(*spec.output_range, out_factor)
    rng = random.Random(seed)
    top = min(vocab_size, 10000)
    prefix = [rng.randrange(top) for _ in range(int(spec.prefix_len * in_factor))]
    return [
        Request(prefix + [rng.randrange(top) for _ in range(rng.randint(in_lo, in_hi))], rng.randint(out_lo, out_hi))
        for _ in range(n)
    ]


def read_jsonl(path: str, num_prompts: int | None, max_output_len: int | None) -> list[Request]:
    requests = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if num_prompts is not None and len(requests) == num_prompts:
                break
            try:
                row = json.loads(line)
                prompt, max_tokens = row["prompt"], row["max_tokens"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f'{path}:{lineno}: expected {{"prompt": ..., "max_tokens": N}} ({e})') from None
            text = isinstance(prompt, str)
            if not (text or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt))) or not prompt:
                raise ValueError(f"{path}:{lineno}: the prompt must be non-empty text or a list of token ids")
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise ValueError(f"{path}:{lineno}: max_tokens must be a positive integer")
            requests.append(Request(prompt, min(max_tokens, max_output_len or max_tokens)))
    if not requests:
        raise ValueError(f"{path} holds no requests")
    if num_prompts is not None and len(requests) < num_prompts:
        raise ValueError(f"{path} holds {len(requests)} requests, fewer than num_prompts={num_prompts}")
    return requests


def tokenize(requests: list[Request], tokenizer) -> list[Request]:
    """Text prompts as token ids (a file workload), so every arm's process gets the same ids."""
    if any(isinstance(r.prompt, str) for r in requests) and tokenizer is None:
        raise ValueError("the workload has text prompts but the checkpoint has no tokenizer: use token ids")
    return [
        Request(tokenizer.encode(r.prompt) if isinstance(r.prompt, str) else r.prompt, r.max_tokens) for r in requests
    ]
