"""Load test of ``minivllm serve`` as an operator would run one: concurrent streaming clients, clients
that hang up mid-stream, and a /metrics scraper, all for ``--duration`` seconds against a real server
(the embedded SmolLM2-135M by default), with the API key set (from the environment, as in production).
Then it checks what a leak or a hang would show, and ends with SIGTERM while streams are in flight.

Reports: requests completed, hung up (by design) and failed (with the first errors); client-side TTFT
p50/p99 and tokens/s; /metrics reads and their p99 latency; KV blocks and sequences left in use after
the run (from /metrics: both must be 0); aborts the server counted; and how long the shutdown took,
with how many in-flight streams got their ``finish_reason: "abort"`` chunk and ``[DONE]``.

    python benchmarks/loadtest.py                        # ~2 minutes on a 2-core CPU
    python benchmarks/loadtest.py --duration 20 --streams 4 --model-path tests-tiny-ckpt   # smoke test
    python benchmarks/loadtest.py --hostile all          # the hostile-client cases (hostile.py), ~3 minutes

Prints a Markdown table and, with ``--json FILE``, appends the figures as one JSON line. Exits 1 when a
request failed, a block or sequence was left in use, or the shutdown cut a stream short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field

import httpx

from minivllm.bench.report import emit_json_line

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import MODEL_NAME, free_port, start_server  # noqa: E402 (benchmarks/serve_process.py)

from minivllm.bench.scrape import scrape  # noqa: E402

WORDS = (
    "the cache stores keys and values in blocks while the scheduler admits new requests every step "
    "and a paged engine keeps the batch full"
).split()


@dataclass
class Tally:
    completed: int = 0
    hung_up: int = 0
    errors: list[str] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    metrics_reads: int = 0
    metrics_latencies: list[float] = field(default_factory=list)


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60)))


async def stream_once(http: httpx.AsyncClient, rng: random.Random, tally: Tally, hang_up_after: int | None) -> None:
    """One streaming completion; with ``hang_up_after``, close the connection after that many chunks."""
    max_tokens = rng.randint(16, 64)
    body = {
        "model": MODEL_NAME,
        "prompt": prompt(rng),
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, chunks, usage, done = time.perf_counter(), None, 0, None, False
    try:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                tally.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = json.loads(line[len("data: ") :])
                    if "error" in event:
                        tally.errors.append(f"in-stream error: {event['error']['message']}")
                        return
                    if event.get("usage"):
                        usage = event["usage"]
                    if event["choices"]:
                        chunks += 1
                        first = first or time.perf_counter()
                        if hang_up_after is not None and chunks >= hang_up_after:
                            tally.hung_up += 1
                            return  # leaving the block closes the connection mid-stream
    except httpx.HTTPError as e:
        tally.errors.append(f"{type(e).__name__}: {e}")
        return
    if not done or usage is None or usage["completion_tokens"] != max_tokens:
        tally.errors.append(f"incomplete stream: done={done}, usage={usage}, wanted {max_tokens} tokens")
        return
    tally.completed += 1
    tally.tokens += max_tokens
    tally.ttfts.append(first - start)


async def scraper(http: httpx.AsyncClient, tally: Tally, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            response = await http.get("/metrics")
            if response.status_code != 200 or "minivllm:kv_cache_used_blocks" not in response.text:
                tally.errors.append(f"/metrics: HTTP {response.status_code}")
        except httpx.HTTPError as e:
            tally.errors.append(f"/metrics: {type(e).__name__}: {e}")
        tally.metrics_reads += 1
        tally.metrics_latencies.append(time.perf_counter() - start)
        await asyncio.sleep(interval)


async def load(base_url: str, headers: dict, args) -> Tally:
    tally, stop = Tally(), asyncio.Event()
    deadline = time.monotonic() + args.duration
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300, limits=limits) as http:

        async def client(seed: int, hangs_up: bool) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                await stream_once(http, rng, tally, rng.randint(1, 5) if hangs_up else None)

        clients = [client(i, False) for i in range(args.streams)]
        clients += [client(args.streams + i, True) for i in range(args.disconnects)]
        metrics = asyncio.create_task(scraper(http, tally, args.metrics_interval, stop))
        await asyncio.gather(*clients)
        stop.set()
        await metrics
    return tally


async def settle(base_url: str, headers: dict, timeout: float) -> dict[str, float]:
    """/metrics once no sequence runs or waits any more (aborts are freed before the loop's next step)."""
    deadline = time.monotonic() + timeout
    while True:
        m = await asyncio.to_thread(scrape, base_url, headers)
        if m["num_requests_running"] == m["num_requests_waiting"] == 0 or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.2)


async def shutdown_in_flight(proc, base_url: str, headers: dict, num_streams: int) -> dict:
    """``num_streams`` long streams; once each has a chunk, SIGTERM. Returns how long the exit took and
    how many streams ended properly (a finish_reason "abort" chunk, then [DONE])."""
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    started = asyncio.Semaphore(0)

    async def one(http: httpx.AsyncClient) -> bool:
        reasons, done = [], False
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    if not reasons:
                        started.release()
                    reasons += [c["finish_reason"] for c in json.loads(line[len("data: ") :]).get("choices", [])]
        return done and reasons[-1] == "abort"

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300) as http:
        tasks = [asyncio.create_task(one(http)) for _ in range(num_streams)]
        for _ in tasks:
            await started.acquire()
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        ended = await asyncio.gather(*tasks, return_exceptions=True)
        code = await asyncio.to_thread(proc.wait, 60)
        return {
            "exit_s": time.perf_counter() - start,
            "exit_code": code,
            "streams": num_streams,
            "ended_with_abort": sum(e is True for e in ended),
        }


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", help="checkpoint to serve (default: the embedded SmolLM2-135M GGUF)")
    parser.add_argument("--duration", type=float, default=90, help="seconds of load")
    parser.add_argument("--streams", type=int, default=16, help="clients streaming completions back to back")
    parser.add_argument(
        "--disconnects", type=int, default=4, help="clients that hang up after 1-5 chunks, again and again"
    )
    parser.add_argument("--metrics-interval", type=float, default=0.05, help="seconds between /metrics reads")
    parser.add_argument("--shutdown-streams", type=int, default=8, help="streams in flight at SIGTERM")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument(
        "--hostile",
        help="instead of the load: these hostile-client cases (comma-separated, or "
        "'all'), each with an innocent stream and /health measured (hostile.py)",
    )
    parser.add_argument("--hostile-tokens", type=int, default=200, help="max_tokens of the hostile requests")
    parser.add_argument("--json", help="append the figures as one JSON line to this file")
    args, server_args = parser.parse_known_args()
    if not args.model_path:
        from minivllm.core.loading.default_model import default_model

        args.model_path = default_model()

    key = secrets.token_urlsafe(16)
    os.environ["MINIVLLM_API_KEY"] = key  # the server reads it from its environment, never from argv
    headers = {"Authorization": f"Bearer {key}"}
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    proc = start_server(args.model_path, port, args, server_args)
    if args.hostile:
        hostile_cases(proc, base_url, port, headers, args)
        return
    try:
        start = time.perf_counter()
        tally = asyncio.run(load(base_url, headers, args))
        wall = time.perf_counter() - start
        after = asyncio.run(settle(base_url, headers, timeout=30))
        shutdown = asyncio.run(shutdown_in_flight(proc, base_url, headers, args.shutdown_streams))
    finally:
        if proc.poll() is None:
            proc.kill()
    row = {
        "model": os.path.basename(args.model_path),
        "duration_s": round(wall, 1),
        "streams": args.streams,
        "disconnecting_clients": args.disconnects,
        "completed": tally.completed,
        "hung_up": tally.hung_up,
        "failed": len(tally.errors),
        "errors": tally.errors[:5],
        "ttft_p50_ms": round(quantile(tally.ttfts, 0.5) * 1000),
        "ttft_p99_ms": round(quantile(tally.ttfts, 0.99) * 1000),
        "output_tok_s": round(tally.tokens / wall, 1),
        "metrics_reads": tally.metrics_reads,
        "metrics_p99_ms": round(quantile(tally.metrics_latencies, 0.99) * 1000, 1),
        "kv_blocks_left": after["kv_cache_used_blocks"],
        "kv_blocks_total": after["kv_cache_total_blocks"],
        "seqs_left": after["num_requests_running"] + after["num_requests_waiting"],
        "server_aborts": after.get('request_success_total{finished_reason="abort"}'),
        "shutdown": shutdown,
        "server_args": server_args,
    }
    emit_json_line(row, args.json)
    print(
        "\n| requests completed | hung up | failed | TTFT p50 / p99 (ms) | output tok/s | /metrics reads (p99 ms) "
        "| KV blocks left | sequences left | SIGTERM: exit (s), streams ended with abort |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {row['completed']} | {row['hung_up']} | {row['failed']} | {row['ttft_p50_ms']} / {row['ttft_p99_ms']} "
        f"| {row['output_tok_s']} | {row['metrics_reads']} ({row['metrics_p99_ms']}) "
        f"| {row['kv_blocks_left']:.0f} of {row['kv_blocks_total']:.0f} | {row['seqs_left']:.0f} "
        f"| {shutdown['exit_s']:.2f}, {shutdown['ended_with_abort']}/{shutdown['streams']} |"
    )
    ok = (
        not tally.errors
        and row["kv_blocks_left"] == 0
        and row["seqs_left"] == 0
        and shutdown["exit_code"] == 0
        and shutdown["ended_with_abort"] == shutdown["streams"]
    )
    sys.exit(0 if ok else 1)


def hostile_cases(proc, base_url: str, port: int, headers: dict, args) -> None:
    from hostile import CASES, report, run_case

    cases = CASES if args.hostile == "all" else args.hostile.split(",")
    rows = []
    try:
        for case in cases:
            rows.append(asyncio.run(run_case(case, base_url, port, headers, proc.pid, args.hostile_tokens)))
            emit_json_line(rows[-1], args.json)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    report(rows)


if __name__ == "__main__":
    main()
