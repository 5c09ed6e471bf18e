"""Online serving benchmark, as ``vllm bench serve``: start ``minivllm serve``, send requests with
Poisson arrivals (``--request-rates``, requests per second; ``inf`` sends them all at once) as streaming
completions, and report TTFT, TPOT, inter-token latency, end-to-end latency and throughput.

Workload: ``--num-prompts`` prompts of random token ids (seeded), input and output lengths drawn
uniformly from ``--input-len`` and ``--output-len`` ranges, ``ignore_eos`` so each request generates
exactly its output length, temperature 0. The model is a ``--model`` shape from throughput.py with random
weights (``load_format="dummy"``, no download), or any checkpoint given by ``--model-path``.

    python benchmarks/serve.py --model qwen3-0.6b --request-rates 4,16,inf
    python benchmarks/serve.py --model-path tests-tiny-ckpt --num-prompts 20 --device cpu   # smoke test

Prints a Markdown table (one row per rate) and, with ``--json FILE``, appends one JSON line per rate. Then,
unless ``--no-offline``, the offline arm: the same requests through ``LLM.generate``, all at once, with the
same engine flags, once the server has stopped; each rate's row gets ``÷ offline``, its output throughput
over the offline one (the issue's target: >= 0.9 at rate inf).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from minivllm.bench.report import emit_json_line
from minivllm.bench.scrape import scrape
from minivllm.bench.shapes import SHAPES, write_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import MODEL_NAME, free_port, start_py_spy, start_server, stop_server  # noqa: E402 (benchmarks/serve_process.py)


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)  # gaps between streamed tokens


def workload(args) -> list[tuple[list[int], int]]:
    rng = random.Random(args.seed)
    (in_lo, in_hi), (out_lo, out_hi) = args.input_len, args.output_len
    return [
        ([rng.randint(0, args.vocab - 1) for _ in range(rng.randint(in_lo, in_hi))], rng.randint(out_lo, out_hi))
        for _ in range(args.num_prompts)
    ]


async def one_request(client: httpx.AsyncClient, url: str, prompt: list[int], max_tokens: int) -> Result:
    body = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    result = Result(num_prompt_tokens=len(prompt))
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    result.error = str(chunk["error"])
                    return result
                if chunk.get("usage"):
                    result.num_output_tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices"):
                    continue
                now = time.perf_counter()  # one chunk per engine step: one token
                if result.ttft == 0.0:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last)
                last = now
        result.e2e = time.perf_counter() - start
        result.ok = result.num_output_tokens == max_tokens
        if not result.ok:
            result.error = f"got {result.num_output_tokens} tokens, wanted {max_tokens}"
    except httpx.HTTPError as e:
        result.error = repr(e)
    return result


async def run_rate(
    base_url: str, requests: list[tuple[list[int], int]], rate: float, seed: int
) -> tuple[list[Result], float]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600.0), limits=limits) as client:
        tasks = []
        start = time.perf_counter()
        for prompt, max_tokens in requests:
            tasks.append(asyncio.create_task(one_request(client, base_url + "/v1/completions", prompt, max_tokens)))
            if rate != float("inf"):
                await asyncio.sleep(rng.expovariate(rate))  # Poisson arrivals: exponential gaps
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - start


def percentiles(values: list[float], scale: float = 1000.0) -> dict:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(values) * scale,
        "median": statistics.median(values) * scale,
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * scale,
    }


def summarize(results: list[Result], duration: float, rate: float, server_metrics: dict) -> dict:
    done = [r for r in results if r.ok]
    output_tokens = sum(r.num_output_tokens for r in done)
    input_tokens = sum(r.num_prompt_tokens for r in done)
    tpots = [(r.e2e - r.ttft) / (r.num_output_tokens - 1) for r in done if r.num_output_tokens > 1]
    return {
        "request_rate": rate,
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:3],
        "duration_s": duration,
        "request_throughput": len(done) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
        "ttft_ms": percentiles([r.ttft for r in done]),
        "tpot_ms": percentiles(tpots),
        "itl_ms": percentiles([g for r in done for g in r.itls]),
        "e2e_ms": percentiles([r.e2e for r in done]),
        "server_batch_size_mean": server_metrics["batch_size_sum"] / max(server_metrics["batch_size_count"], 1),
    }


def offline_throughput(model_path: str, args, server_args: list[str], requests: list[tuple[list[int], int]]) -> float:
    """Output tokens per second of ``LLM.generate`` on the same requests, with the server's engine flags."""
    from minivllm import LLM, SamplingParams
    from minivllm.cli.serve import add_engine_arguments, engine_kwargs

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    flags, _ = parser.parse_known_args(server_args)
    kwargs = {**engine_kwargs(flags), "max_model_len": args.max_model_len, "device": args.device}
    llm = LLM(model_path, **kwargs)
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for _, m in requests]
    llm.generate([p for p, _ in requests[:8]], params[:8], use_tqdm=False)  # warm-up, as the server's
    start = time.perf_counter()
    outputs = llm.generate([p for p, _ in requests], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    llm.close()
    return sum(len(o["tokens"]) for o in outputs) / elapsed


def main() -> None:
    def int_range(text: str) -> tuple[int, int]:
        lo, _, hi = text.partition(":")
        return int(lo), int(hi or lo)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Other arguments go to `minivllm serve` (e.g. --scheduler chunked --enforce-eager).",
    )
    parser.add_argument("--model", default="qwen3-0.6b", choices=sorted(SHAPES), help="a shape with random weights")
    parser.add_argument("--model-path", help="a checkpoint to serve instead of --model")
    parser.add_argument("--num-prompts", type=int, default=300)
    parser.add_argument("--request-rates", default="4,16,inf", help="comma-separated requests/s; inf = all at once")
    parser.add_argument("--input-len", type=int_range, default=(128, 1024), help="LO:HI prompt tokens")
    parser.add_argument("--output-len", type=int_range, default=(64, 512), help="LO:HI generated tokens")
    parser.add_argument("--vocab", type=int, default=10000, help="prompt token ids are drawn below this")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--json", help="append one JSON line per rate to this file")
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        help="record the API server process with py-spy (if installed) "
        "while the rates run, as collapsed stacks (py-spy's raw format) in FILE",
    )
    parser.add_argument(
        "--offline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the requests through LLM.generate and print each rate's ratio to it",
    )
    args, server_args = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.model_path:
            model_path = args.model_path
        else:
            write_config(args.model, tmp)
            model_path, server_args = tmp, ["--load-format", "dummy", *server_args]
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        proc = start_server(model_path, port, args, server_args)
        spy = start_py_spy(proc.pid, args.py_spy) if args.py_spy else None
        try:
            requests = workload(args)
            asyncio.run(run_rate(base_url, requests[: min(8, len(requests))], float("inf"), args.seed))  # warm-up
            rows = []
            for rate in [float(r) for r in args.request_rates.split(",")]:
                results, duration = asyncio.run(run_rate(base_url, requests, rate, args.seed))
                row = summarize(results, duration, rate, scrape(base_url))
                row.update(
                    model=args.model_path or args.model,
                    num_prompts=args.num_prompts,
                    input_len=args.input_len,
                    output_len=args.output_len,
                    server_args=server_args,
                )
                rows.append(row)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(timeout=60)
            stop_server(proc)
        offline = offline_throughput(model_path, args, server_args, requests) if args.offline else None
    for row in rows:
        row["offline_output_throughput"] = offline
        row["ratio_to_offline"] = row["output_throughput"] / offline if offline else None
        emit_json_line(row, args.json)
    print(
        "\n| rate (req/s) | done | req/s | output tok/s | TTFT mean / p99 (ms) | TPOT mean / p99 (ms) "
        "| ITL mean / p99 (ms) | TTFT p50 (ms) | E2E mean (ms) | mean batch so far | ÷ offline |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['request_rate']:g} | {r['completed']}/{r['completed'] + r['failed']} "
            f"| {r['request_throughput']:.2f} "
            f"| {r['output_throughput']:.0f} | {r['ttft_ms']['mean']:.0f} / {r['ttft_ms']['p99']:.0f} "
            f"| {r['tpot_ms']['mean']:.1f} / {r['tpot_ms']['p99']:.1f} | {r['itl_ms']['mean']:.1f} / "
            f"{r['itl_ms']['p99']:.1f} | {r['ttft_ms']['median']:.0f} | {r['e2e_ms']['mean']:.0f} "
            f"| {r['server_batch_size_mean']:.1f} | {r['ratio_to_offline'] or float('nan'):.2f} |"
        )
    if offline:
        print(f"\noffline (LLM.generate, all {args.num_prompts} at once): {offline:.0f} output tok/s")


if __name__ == "__main__":
    main()
