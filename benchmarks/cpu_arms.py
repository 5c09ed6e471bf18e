"""The arms of benchmarks/cpu.py: the workloads of its cases, and one class per engine (minivllm, transformers,
llama.cpp) that builds itself once and runs a case when asked, each in a spawned process of its own
(:class:`Worker`), so start-up and peak RSS are each one's own."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp_peer  # noqa: E402 (benchmarks/llama_cpp_peer.py)

CASES = ("batch1", "batch16", "mixed64")
SUBJECTS = [
    "cat",
    "dog",
    "robot",
    "fish",
    "bird",
    "child",
    "king",
    "tree",
    "stone",
    "cloud",
    "horse",
    "mouse",
    "wizard",
    "sailor",
    "baker",
    "fox",
]


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


def timed(run) -> dict:
    start = time.perf_counter()
    tokens = run()
    return dict(seconds=time.perf_counter() - start, tokens=tokens, peak_rss_mb=peak_rss_mb())


class MinivllmArm:
    """``LLM.generate`` with one ``quantization`` setting; ``info`` carries the workloads, built by its tokenizer."""

    def __init__(self, model: str, args, quantization: str) -> None:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from minivllm import LLM, SamplingParams

        start = time.perf_counter()
        self.llm = LLM(model, dtype=args.dtype, max_model_len=1024, max_num_seqs=64, quantization=quantization)
        startup = time.perf_counter() - start
        self.workloads = {case: workload(case, self.llm.tokenizer) for case in args.cases}
        self.llm.generate(
            self.workloads[args.cases[0]][0][:2], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False
        )  # warm-up
        self.info = dict(
            startup_s=startup,
            dtype=str(self.llm.engine.executor.runner.dtype).removeprefix("torch."),
            backend=self.llm.engine.config.resolved_attention_backend,
            threads=torch.get_num_threads(),
            workloads=self.workloads,
        )

    def run(self, case: str) -> dict:
        from minivllm import SamplingParams

        prompts, new = self.workloads[case]
        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in new]
        return timed(lambda: [o["tokens"] for o in self.llm.generate(prompts, params, use_tqdm=False)])


class TransformersArm:
    """transformers ``generate`` in static left-padded batches of ``--hf-batch``, from the same GGUF weights."""

    def __init__(self, model: str, args, dtype: str, workloads) -> None:
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
        self.hf = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
        self.hf.load_state_dict(weights, strict=False)  # lm_head is tied to the embedding
        self.hf.tie_weights()
        del weights
        self.torch, self.workloads, self.batch = torch, workloads, args.hf_batch
        self.info = dict(startup_s=time.perf_counter() - start, dtype=dtype, threads=torch.get_num_threads())
        self.hf.generate(input_ids=torch.tensor([[1, 2, 3, 4]]), max_new_tokens=4, do_sample=False, pad_token_id=0)

    def run(self, case: str) -> dict:
        torch, (prompts, new) = self.torch, self.workloads[case]
        batches = [list(range(i, min(i + self.batch, len(prompts)))) for i in range(0, len(prompts), self.batch)]

        def generate():
            tokens = [None] * len(prompts)
            for rows in batches:
                width = max(len(prompts[i]) for i in rows)
                ids = torch.tensor([[0] * (width - len(prompts[i])) + prompts[i] for i in rows])  # left-padded
                mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
                steps = max(new[i] for i in rows)  # a static batch runs to its longest request
                with torch.inference_mode():
                    out = self.hf.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=steps,
                        min_new_tokens=steps,
                        do_sample=False,
                        pad_token_id=0,
                    )
                for row, i in enumerate(rows):
                    tokens[i] = out[row, width : width + new[i]].tolist()
            return tokens

        return timed(generate)


class LlamaCppArm:
    """llama.cpp's ``llama-batched-bench`` (a subprocess per round): the chat cases only, no tokens to compare."""

    cases = ("batch1", "batch16")

    def __init__(self, bin_dir: str, model: str, threads: int, workloads) -> None:
        self.bin_dir, self.model, self.threads, self.workloads = bin_dir, model, threads, workloads
        self.info = dict(threads=threads)

    def run(self, case: str) -> dict:
        prompts, new = self.workloads[case]
        prompt_len = round(sum(map(len, prompts)) / len(prompts))
        result = llama_cpp_peer.batched_bench(self.bin_dir, self.model, self.threads, prompt_len, new[0], len(prompts))
        return dict(seconds=result["t"], decode_tok_s=result["speed_tg"], tokens=None)


def serve_arm(cls, args, conn) -> None:
    """An arm's process: build it, send its ``info``, then run each case received until ``None``."""
    arm = cls(*args)
    conn.send(arm.info)
    while (case := conn.recv()) is not None:
        conn.send(arm.run(case))


class Worker:
    """An arm in a spawned process of its own, run one case at a time (the caller interleaves the arms)."""

    def __init__(self, cls, *args) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_arm, args=(cls, args, child), name=cls.__name__)
        self.proc.start()
        self.info = self.receive()

    def receive(self):
        while not self.conn.poll(5):
            if not self.proc.is_alive():
                raise SystemExit(f"{self.proc.name} failed (exit code {self.proc.exitcode})")
        return self.conn.recv()

    def run(self, case: str) -> dict:
        self.conn.send(case)
        return self.receive()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join()
