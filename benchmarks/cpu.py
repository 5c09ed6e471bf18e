"""minivllm against its peers on the CPU, side by side, on the embedded SmolLM2-135M GGUF: transformers
``generate`` and, with ``--llama-cpp BIN_DIR``, llama.cpp.

minivllm and transformers run on the same weights, dequantised from the same GGUF file, by default in the
same dtype (minivllm's resolved one: ``--dtype auto`` is bfloat16 on CPUs with native bf16, else float32);
``--hf-dtype float32`` runs transformers as it loads a GGUF by default instead, to compare the two defaults.
``--quantization none,gguf`` runs one minivllm arm per setting (``gguf``: the file's weights kept quantized).
llama.cpp runs the same GGUF file quantized, as it always does, with as many threads as minivllm uses, through
its own ``llama-batched-bench`` (benchmarks/llama_cpp_peer.py; built from source by
``scripts/build_llama_cpp.sh``, never in CI). Cases, all greedy:

- ``batch1``: one chat prompt, 64 new tokens;
- ``batch16``: 16 similar chat prompts x 64 new tokens (transformers: one left-padded batch; llama.cpp: 16
  parallel streams of a prompt of the mean length, random tokens, no sampling);
- ``mixed64``: 64 prompts of 100-400 random token ids, 32-128 new tokens each, ``ignore_eos``
  (transformers: static left-padded batches of ``--hf-batch``, each running to its longest request;
  llama.cpp: not run).

Each torch arm lives in a process of its own (so start-up and peak RSS are each one's own), built once and
warmed up; then ``--repeats`` rounds run every case on every arm in turn (interleaved, so a change in the
machine's load touches all arms alike), and each arm's best round is kept. Output tok/s counts the tokens
requested (a static batch's extra tokens are not counted) over the whole call, prefill included; llama.cpp's
figure is the same over its own prefill + decode time, and its decode-only speed is printed beside it.
Greedy agreement: each torch arm's tokens against float32 transformers' (a float32 transformers run is added
when the dtype is not float32): the share of sequences equal token for token, and the mean share of tokens
before the first difference.

    python benchmarks/cpu.py [--cases batch1,batch16,mixed64] [--quantization none] [--dtype auto]
                             [--hf-dtype same] [--threads 2] [--repeats 3] [--hf-batch 16]
                             [--llama-cpp .llama.cpp/bin] [--json FILE]

Prints a table, and one JSON line per case plus a summary line (``--json FILE`` appends them there too).
"""

from __future__ import annotations

import argparse
import os
import sys

from minivllm.bench.report import emit_json_line

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_arms import CASES, LlamaCppArm, MinivllmArm, TransformersArm, Worker  # noqa: E402 (benchmarks/cpu_arms.py)


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[float, float]:
    """(share of sequences equal to the reference's, mean share of tokens before the first difference)."""
    same, prefix = 0, 0.0
    for got, want in zip(tokens, reference):
        same += got == want
        n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        prefix += n / max(len(want), 1)
    return same / len(reference), prefix / len(reference)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a GGUF file (default: the embedded SmolLM2-135M)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--quantization", default="none", help="minivllm arms, one per setting: none, gguf")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument(
        "--hf-dtype",
        default="same",
        choices=["same", "float32", "bfloat16"],
        help="transformers' dtype ('same': minivllm's resolved one)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads of every arm (0: minivllm's rule, torch's default in transformers)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each arm's best is kept")
    parser.add_argument("--hf-batch", type=int, default=16)
    parser.add_argument(
        "--llama-cpp",
        metavar="BIN_DIR",
        default=None,
        help="llama.cpp's tools (scripts/build_llama_cpp.sh) as a peer; not run without it",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.cases, args.quantization = args.cases.split(","), args.quantization.split(",")
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    if args.model is None:
        from minivllm.core.loading.default_model import default_model

        args.model = default_model()
    if args.threads:  # the arms' processes inherit it; minivllm then skips its idle-core rule (core/cpu.py)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    arms = {f"minivllm {q}": Worker(MinivllmArm, args.model, args, q) for q in args.quantization}
    ours = next(iter(arms.values())).info
    workloads = ours.pop("workloads")
    hf_dtype = ours["dtype"] if args.hf_dtype == "same" else args.hf_dtype
    arms["transformers"] = Worker(TransformersArm, args.model, args, hf_dtype, workloads)
    if args.llama_cpp:
        arms["llama.cpp"] = LlamaCppArm(args.llama_cpp, args.model, ours["threads"], workloads)
    best = {name: {} for name in arms}
    for _ in range(args.repeats):
        for case in args.cases:
            for name, arm in arms.items():
                if case in getattr(arm, "cases", CASES):
                    result = arm.run(case)
                    if case not in best[name] or result["seconds"] < best[name][case]["seconds"]:
                        best[name][case] = result
    for arm in arms.values():
        if isinstance(arm, Worker):
            arm.close()
    reference = best["transformers"]
    if hf_dtype != "float32":  # float32 transformers' tokens, for the agreement (untimed)
        worker = Worker(TransformersArm, args.model, args, "float32", workloads)
        reference = {case: worker.run(case) for case in args.cases}
        worker.close()
    report(
        args,
        arms,
        best,
        reference,
        workloads,
        dict(
            dtype=ours["dtype"],
            hf_dtype=hf_dtype,
            threads=ours["threads"],
            backend=ours["backend"],
            hf_batch=args.hf_batch,
            repeats=args.repeats,
        ),
    )


def report(args, arms: dict, best: dict, reference: dict, workloads: dict, common: dict) -> None:
    names = list(arms)
    print(
        f"minivllm in {common['dtype']} ({common['backend']} attention), transformers in {common['hf_dtype']}, "
        f"{common['threads']} threads; output tok/s, best of {args.repeats} interleaved rounds"
    )
    print("| case | " + " | ".join(names) + " | agreement with float32 transformers (same seqs / mean prefix) |")
    print("| --- |" + " ---: |" * len(names) + " --- |")
    for case in args.cases:
        prompts, new = workloads[case]
        tok_s = {name: sum(new) / best[name][case]["seconds"] for name in names if case in best[name]}
        agree = {
            name: agreement(best[name][case]["tokens"], reference[case]["tokens"])
            for name in tok_s
            if best[name][case]["tokens"] is not None
        }
        cells = [f"{tok_s[name]:.1f}" if name in tok_s else "-" for name in names]
        if "llama.cpp" in tok_s:
            cells[names.index("llama.cpp")] += f" (decode only {best['llama.cpp'][case]['decode_tok_s']:.1f})"
        print(
            f"| {case} | "
            + " | ".join(cells)
            + " | "
            + ", ".join(f"{name} {a[0]:.2f} / {a[1]:.2f}" for name, a in agree.items())
            + " |"
        )
        emit_json_line(
            dict(
                bench="cpu",
                case=case,
                prompts=len(prompts),
                output_tokens=sum(new),
                tok_s={name: round(v, 1) for name, v in tok_s.items()},
                llama_cpp_decode_tok_s=best["llama.cpp"][case]["decode_tok_s"] if "llama.cpp" in tok_s else None,
                agreement={name: dict(same=a[0], prefix=round(a[1], 4)) for name, a in agree.items()},
                **common,
            ),
            args.json,
        )
    workers = {name: arm for name, arm in arms.items() if isinstance(arm, Worker)}
    print(
        "start-up: "
        + ", ".join(f"{name} {arm.info['startup_s']:.1f} s" for name, arm in workers.items())
        + "; peak RSS: "
        + ", ".join(f"{name} {max(r['peak_rss_mb'] for r in best[name].values()):.0f} MB" for name in workers)
    )
    emit_json_line(
        dict(
            bench="cpu",
            case="summary",
            startup_s={n: round(a.info["startup_s"], 2) for n, a in workers.items()},
            peak_rss_mb={n: round(max(r["peak_rss_mb"] for r in best[n].values())) for n in workers},
            **common,
        ),
        args.json,
    )


if __name__ == "__main__":
    main()
