"""What the fp8 KV cache (or quantized weights) cost in quality, on real weights: perplexity over a real
English text and greedy agreement on chat prompts, ``kv_cache_dtype="fp8"`` against ``"auto"``, or with
``--setting quantization``, ``quantization="gguf"`` (or with ``--compare fp8``, ``"fp8"``: the GGUF's
dequantised weights requantised to fp8 per channel) against ``"none"`` (the dequantised reference).

- Perplexity: the text (default ``benchmarks/data/coriolanus.txt``: the opening of Shakespeare's
  *Coriolanus*, public domain, from the tinyshakespeare data set) is run through the engine's own model
  runner in chunks of ``--chunk`` tokens, each attending over the previous chunks through the paged cache,
  as prefill over a cached prefix does; every next token's log-probability counts.
- Agreement: ``--num-prompts`` chat prompts, greedy, ``--max-tokens`` new tokens each: how many outputs are
  identical, and the mean share of each output that matches before the first difference.

    python benchmarks/kv_quality.py                                   # the embedded SmolLM2, CPU, float32
    python benchmarks/kv_quality.py --device cuda --dtype bfloat16   # on a GPU, in bf16
    python benchmarks/kv_quality.py --setting quantization           # GGUF weights kept quantized (CPU)
    python benchmarks/kv_quality.py --setting quantization --compare fp8 --device cuda --dtype bfloat16
    python benchmarks/kv_quality.py --setting quantization --llama-cpp .llama.cpp/bin   # and llama.cpp's

With ``--llama-cpp BIN_DIR`` (``scripts/build_llama_cpp.sh`` builds it) it adds ``llama-perplexity`` on the same
GGUF and text, and both settings' perplexity over llama-perplexity's own windows (``--llama-ctx`` tokens each,
from an empty cache, the second half scored; benchmarks/llama_cpp_peer.py), so the three figures count the
same tokens.

Prints a Markdown table and one JSON line (``--json FILE`` appends it there too).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from minivllm import LLM, SamplingParams
from minivllm.bench.report import emit_json_line
from minivllm.core.interfaces import ScheduledBatch
from minivllm.core.loading.default_model import default_model
from minivllm.core.sequence import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp_peer  # noqa: E402 (benchmarks/llama_cpp_peer.py)

TOPICS = [
    "the moon",
    "bread",
    "rivers",
    "chess",
    "volcanoes",
    "the piano",
    "bees",
    "winter",
    "trains",
    "honey",
    "glaciers",
    "owls",
    "tea",
    "the ocean",
    "maps",
    "clocks",
]
# setting -> (reference, the values it can be compared with: the first by default)
SETTINGS = {"kv_cache_dtype": ("auto", ("fp8",)), "quantization": ("none", ("gguf", "fp8"))}
PROMPTS = [f"Tell me one interesting fact about {t}." for t in TOPICS] + [
    f"Write two sentences about {t}." for t in TOPICS
]


@torch.inference_mode()
def log_likelihood(llm: LLM, tokens: list[int], chunk: int, first: int = 0) -> tuple[float, int]:
    """(summed negative log-likelihood, count) of ``tokens[first + 1:]``, each given every token before it:
    the text runs in chunks of ``chunk`` tokens, each attending over the previous ones through the paged cache."""
    engine = llm.engine
    runner = engine.executor.runner
    seq = Sequence(tokens, SamplingParams(max_tokens=1))
    assert engine.allocator.allocate(seq, len(tokens)), "the KV cache is too small for the text"
    nll, count = 0.0, 0
    for start in range(0, len(tokens) - 1, chunk):
        n = min(chunk, len(tokens) - 1 - start)
        batch = ScheduledBatch()
        batch.add(seq, n)
        logits = runner.model.compute_logits(runner._forward(batch)).float()  # [n, V]
        skip = min(max(first - start, 0), n)  # positions before `first` are context, not scored
        targets = torch.tensor(tokens[start + 1 + skip : start + 1 + n], device=logits.device)
        nll -= logits[skip:].log_softmax(dim=-1).gather(1, targets[:, None]).sum().item()
        count += n - skip
        seq.num_computed_tokens += n
    engine.allocator.free(seq)
    return nll, count


def perplexity(llm: LLM, tokens: list[int], chunk: int) -> float:
    nll, count = log_likelihood(llm, tokens, chunk)
    return math.exp(nll / count)


def window_perplexity(llm: LLM, tokens: list[int], n_ctx: int) -> float:
    """Perplexity over llama-perplexity's windows (benchmarks/llama_cpp_peer.py): each window of ``n_ctx`` tokens
    from an empty cache, its second half scored."""
    totals = [
        log_likelihood(llm, tokens[start : start + n_ctx], n_ctx, first)
        for start, first in llama_cpp_peer.window_targets(len(tokens), n_ctx)
    ]
    return math.exp(sum(nll for nll, _ in totals) / sum(count for _, count in totals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--text", default=os.path.join(os.path.dirname(__file__), "data", "coriolanus.txt"))
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="kv_cache_dtype")
    parser.add_argument(
        "--compare",
        default=None,
        help="the value compared with the reference (default: the setting's first: fp8 KV cache, gguf quantization)",
    )
    parser.add_argument(
        "--llama-cpp",
        metavar="BIN_DIR",
        default=None,
        help="also llama-perplexity from this folder (scripts/build_llama_cpp.sh) on the same file",
    )
    parser.add_argument("--llama-ctx", type=int, default=512, help="llama-perplexity's window (-c), with --llama-cpp")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = args.model or default_model()
    text = open(args.text).read()
    name, choices = SETTINGS[args.setting]
    other = args.compare or choices[0]
    if other not in choices:
        parser.error(f"--compare for {args.setting} is one of {', '.join(choices)}")
    results = {}
    for value in (name, other):
        start = time.perf_counter()
        llm = LLM(
            model,
            device=args.device,
            dtype=args.dtype,
            kvcache_block_size=256,
            max_model_len=8192,
            max_num_seqs=args.num_prompts,
            num_kvcache_blocks=64,
            enforce_eager=True,
            **{args.setting: value},
        )
        tokens = llm.tokenizer.encode(text)
        ppl = perplexity(llm, tokens, args.chunk)
        windowed = window_perplexity(llm, tokens, args.llama_ctx) if args.llama_cpp else None
        threads = torch.get_num_threads()
        conversations = [[{"role": "user", "content": p}] for p in PROMPTS[: args.num_prompts]]
        greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
        outputs = [o["tokens"] for o in llm.chat(conversations, greedy, use_tqdm=False)]
        results[value] = dict(
            ppl=ppl,
            windowed=windowed,
            outputs=outputs,
            seconds=time.perf_counter() - start,
            dtype=str(llm.engine.executor.runner.dtype).removeprefix("torch."),
            block_bytes=llm.engine.executor.block_bytes,
        )
        del llm
    base, fp8 = results[name], results[other]
    prefix = [
        next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) / len(x)
        for x, y in zip(base["outputs"], fp8["outputs"])
    ]
    summary = dict(
        model=os.path.basename(model),
        device=args.device,
        dtype=base["dtype"],
        text_tokens=len(tokens),
        chunk=args.chunk,
        setting=args.setting,
        **{f"ppl_{name}": base["ppl"], f"ppl_{other}": fp8["ppl"]},
        ppl_increase=fp8["ppl"] / base["ppl"] - 1,
        prompts=len(prefix),
        identical=sum(p == 1.0 for p in prefix),
        mean_prefix=sum(prefix) / len(prefix),
        **{f"block_bytes_{name}": base["block_bytes"], f"block_bytes_{other}": fp8["block_bytes"]},
    )
    print(f"| {args.setting} | perplexity ({len(tokens)} tokens) | KV bytes per block |\n| --- | ---: | ---: |")
    print(f"| {name} ({base['dtype']}) | {base['ppl']:.4f} | {base['block_bytes']:,} |")
    print(f"| {other} | {fp8['ppl']:.4f} ({100 * summary['ppl_increase']:+.2f}%) | {fp8['block_bytes']:,} |")
    print(
        f"greedy, {args.max_tokens} tokens: {summary['identical']}/{len(prefix)} outputs identical, "
        f"{100 * summary['mean_prefix']:.1f}% of each output matches before the first difference (mean)"
    )
    if args.llama_cpp:
        summary["llama_cpp"] = theirs = llama_cpp_peer.perplexity(
            args.llama_cpp, model, args.text, args.llama_ctx, threads
        )
        summary["window_ppl"] = {name: base["windowed"], other: fp8["windowed"], "llama_cpp": theirs["ppl"]}
        ours_chunks = len(llama_cpp_peer.window_targets(len(tokens), args.llama_ctx))
        print(
            f"\nllama-perplexity's windows: {theirs['chunks']} windows of {args.llama_ctx} tokens (minivllm's "
            f"tokenizer: {ours_chunks}), the second half of each scored ({theirs['tokens']} tokens), "
            f"{threads} threads"
        )
        print("| engine | perplexity | ÷ llama.cpp |\n| --- | ---: | ---: |")
        for label, value in (
            (f"minivllm, {name}", base["windowed"]),
            (f"minivllm, {other}", fp8["windowed"]),
            ("llama.cpp", theirs["ppl"]),
        ):
            print(f"| {label} | {value:.4f} | {value / theirs['ppl']:.4f} |")
    emit_json_line(summary, args.json)


if __name__ == "__main__":
    main()
