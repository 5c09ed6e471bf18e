"""minivllm against transformers ``generate`` on the CPU, side by side, on the embedded SmolLM2-135M GGUF.

Both run on the same weights, dequantised from the same GGUF file, by default in the same dtype
(minivllm's resolved one: ``--dtype auto`` is bfloat16 on CPUs with native bf16, else float32);
``--hf-dtype float32`` runs transformers as it loads a GGUF by default instead, to compare the two
defaults. Each runs in its own process (so start-up and peak RSS are each one's own). Cases, all greedy:

- ``batch1``: one chat prompt, 64 new tokens;
- ``batch16``: 16 similar chat prompts x 64 new tokens (transformers: one left-padded batch);
- ``mixed64``: 64 prompts of 100-400 random token ids, 32-128 new tokens each, ``ignore_eos``
  (transformers: static left-padded batches of ``--hf-batch``, each running to its longest request).

Output tok/s counts the tokens requested (a static batch's extra tokens are not counted); each case is
timed ``--repeats`` times after a warm-up and the best run is kept. Greedy agreement: each run's tokens
against float32 transformers' (a float32 transformers run is added when the dtype is not float32): the
share of sequences equal token for token, and the mean share of tokens before the first difference.

    python benchmarks/cpu.py [--cases batch1,batch16,mixed64] [--dtype auto] [--hf-dtype same] [--threads 2]
                             [--repeats 3] [--hf-batch 16] [--json FILE]

Prints a table, and one JSON line per case plus a summary line (``--json FILE`` appends them there too).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import time

from minivllm.bench.report import emit_json_line

CASES = ("batch1", "batch16", "mixed64")
SUBJECTS = ["cat", "dog", "robot", "fish", "bird", "child", "king", "tree", "stone", "cloud", "horse", "mouse",
            "wizard", "sailor", "baker", "fox"]


def workload(case: str, tokenizer) -> tuple[list[list[int]], list[int]]:
    """(prompt token ids, new tokens of each) of a case."""
    if case == "mixed64":
        rng = random.Random(0)
        prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, 400))] for _ in range(64)]
        return prompts, [rng.randint(32, 128) for _ in range(64)]
    subjects = SUBJECTS[:1] if case == "batch1" else SUBJECTS
    chats = [[{"role": "user", "content": f"Write a short story about a {s} who learns to fly."}] for s in subjects]
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts], [64] * len(texts)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def best_of(repeats: int, run) -> tuple[float, list[list[int]]]:
    """The shortest wall time of ``repeats`` runs, and the tokens of the last."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = run()
        times.append(time.perf_counter() - start)
    return min(times), tokens


def run_minivllm(model: str, args, queue) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from minivllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model, dtype=args.dtype, max_model_len=1024, max_num_seqs=64)
    startup = time.perf_counter() - start
    dtype = str(llm.engine.executor.runner.dtype).removeprefix("torch.")
    cases = {case: workload(case, llm.tokenizer) for case in args.cases}
    llm.generate(cases[args.cases[0]][0][:2], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    results = {}
    for case, (prompts, new) in cases.items():
        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in new]
        seconds, tokens = best_of(args.repeats, lambda: [o["tokens"] for o in llm.generate(prompts, params,
                                                                                           use_tqdm=False)])
        results[case] = dict(seconds=seconds, tokens=tokens)
    queue.put(dict(startup_s=startup, peak_rss_mb=peak_rss_mb(), dtype=dtype,
                   backend=llm.engine.config.resolved_attention_backend, threads=torch.get_num_threads(),
                   cases=results, workloads=cases))


def run_transformers(model: str, args, dtype: str, workloads, repeats: int, queue) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    start = time.perf_counter()
    folder, file = os.path.split(os.path.abspath(model))
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    weights = load_gguf_checkpoint(model, return_tensors=True, model_to_load=skeleton)["tensors"]
    hf = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    hf.load_state_dict(weights, strict=False)  # lm_head is tied to the embedding
    hf.tie_weights()
    del weights
    startup = time.perf_counter() - start
    if repeats:  # warm-up
        hf.generate(input_ids=torch.tensor([[1, 2, 3, 4]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    results = {}
    for case, (prompts, new) in workloads.items():
        batches = [list(range(i, min(i + args.hf_batch, len(prompts)))) for i in range(0, len(prompts), args.hf_batch)]

        def run():
            tokens = [None] * len(prompts)
            for rows in batches:
                width = max(len(prompts[i]) for i in rows)
                ids = torch.tensor([[0] * (width - len(prompts[i])) + prompts[i] for i in rows])  # left-padded
                mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
                steps = max(new[i] for i in rows)  # a static batch runs to its longest request
                with torch.inference_mode():
                    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                                      do_sample=False, pad_token_id=0)
                for row, i in enumerate(rows):
                    tokens[i] = out[row, width : width + new[i]].tolist()
            return tokens

        seconds, tokens = best_of(max(repeats, 1), run)  # repeats=0: a reference run, once, untimed
        results[case] = dict(seconds=seconds, tokens=tokens)
    queue.put(dict(startup_s=startup, peak_rss_mb=peak_rss_mb(), dtype=dtype, threads=torch.get_num_threads(),
                   cases=results))


def in_process(target, *args):
    """Run ``target(*args, queue)`` in a fresh process; what it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: still working, unless it died
            if not proc.is_alive():
                raise SystemExit(f"{target.__name__} failed (exit code {proc.exitcode})") from None
    proc.join()
    return result


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
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--hf-dtype", default="same", choices=["same", "float32", "bfloat16"],
                        help="transformers' dtype ('same': minivllm's resolved one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in both (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-batch", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.cases = args.cases.split(",")
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    if args.model is None:
        from minivllm.core.loading.default_model import default_model

        args.model = default_model()
    ours = in_process(run_minivllm, args.model, args)
    workloads = ours.pop("workloads")
    hf_dtype = ours["dtype"] if args.hf_dtype == "same" else args.hf_dtype
    theirs = in_process(run_transformers, args.model, args, hf_dtype, workloads, args.repeats)
    reference = theirs
    if hf_dtype != "float32":  # float32 transformers' tokens, for the agreement (untimed)
        reference = in_process(run_transformers, args.model, args, "float32", workloads, 0)
    common = dict(dtype=ours["dtype"], hf_dtype=hf_dtype, threads=ours["threads"], backend=ours["backend"],
                  hf_batch=args.hf_batch, repeats=args.repeats)
    print(f"minivllm in {ours['dtype']} ({ours['backend']} attention), transformers in {hf_dtype}, "
          f"{ours['threads']} threads")
    print(f"{'case':<9} {'minivllm tok/s':>15} {'transformers tok/s':>19} {'ratio':>6}   agreement with float32 "
          "transformers (same seqs / mean prefix): minivllm, transformers")
    for case in args.cases:
        prompts, new = workloads[case]
        tokens = sum(new)
        mine, hf = tokens / ours["cases"][case]["seconds"], tokens / theirs["cases"][case]["seconds"]
        ref = reference["cases"][case]["tokens"]
        agree_ours = agreement(ours["cases"][case]["tokens"], ref)
        agree_hf = agreement(theirs["cases"][case]["tokens"], ref)
        print(f"{case:<9} {mine:>15.1f} {hf:>19.1f} {mine / hf:>5.2f}x   {agree_ours[0]:.2f} / {agree_ours[1]:.2f}, "
              f"{agree_hf[0]:.2f} / {agree_hf[1]:.2f}")
        row = dict(bench="cpu", case=case, prompts=len(prompts), output_tokens=tokens, minivllm_tok_s=round(mine, 1),
                   transformers_tok_s=round(hf, 1), ratio=round(mine / hf, 3),
                   minivllm_agreement=dict(same=agree_ours[0], prefix=round(agree_ours[1], 4)),
                   transformers_agreement=dict(same=agree_hf[0], prefix=round(agree_hf[1], 4)), **common)
        emit_json_line(row, args.json)
    print(f"start-up: minivllm {ours['startup_s']:.1f} s, transformers {theirs['startup_s']:.1f} s; "
          f"peak RSS: minivllm {ours['peak_rss_mb']:.0f} MB, transformers {theirs['peak_rss_mb']:.0f} MB")
    emit_json_line(dict(bench="cpu", case="summary", minivllm_startup_s=round(ours["startup_s"], 2),
                        transformers_startup_s=round(theirs["startup_s"], 2),
                        minivllm_peak_rss_mb=round(ours["peak_rss_mb"]), transformers_peak_rss_mb=round(
                            theirs["peak_rss_mb"]), **common), args.json)


if __name__ == "__main__":
    main()
