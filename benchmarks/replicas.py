"""Replicas behind the router, as an operator runs them: ``minivllm serve --data-parallel-size N`` (the
embedded SmolLM2-135M by default) under mixed traffic from the official ``openai`` client.

Two parts, each on a fresh server:
1. Throughput: ``--requests`` greedy requests (completions and chat, streamed and whole, ``--max-tokens``
   each, ``--concurrency`` at a time) against N = 1 (a plain ``minivllm serve``) and N = ``--replicas``;
   output tokens/s of each and the ratio. On the CPU each replica gets an equal share of the cores.
2. Failover (N = ``--replicas``): the same traffic, one replica killed (SIGKILL) once a third of the
   requests are done; reports how many requests failed (only ones in flight on the dead replica may)
   and that every request sent after the kill succeeded.

    python benchmarks/replicas.py --replicas 2 --requests 300

Needs the router extra (``pip install 'minivllm[router]'``). Exits 1 if a request sent after the kill
failed or the greedy outputs differ between the two servers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from minivllm.entrypoints.replicas import replica_pid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import launch  # noqa: E402 (benchmarks/serve_process.py)

PROMPTS = [f"Write one sentence about the number {i}." for i in range(20)]


def start(n: int, port: int, extra: list[str]) -> subprocess.Popen:
    return launch(port, [*extra, *(["--data-parallel-size", str(n)] if n > 1 else [])], timeout=300)


def ask(client: openai.OpenAI, i: int, max_tokens: int) -> tuple[str, int]:
    """Request ``i``: alternately chat and completions, every other one streamed; (text, tokens)."""
    prompt, stream = PROMPTS[i % len(PROMPTS)], i % 4 >= 2
    if i % 2:
        out = client.completions.create(
            model="SmolLM2-135M-Instruct",
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=stream,
            stream_options={"include_usage": True} if stream else None,
        )
        if stream:
            chunks = list(out)
            return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage.completion_tokens
        return out.choices[0].text, out.usage.completion_tokens
    out = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=stream,
        stream_options={"include_usage": True} if stream else None,
    )
    if stream:
        chunks = list(out)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage.completion_tokens
    return out.choices[0].message.content, out.usage.completion_tokens


def load(port: int, args, on_progress=None) -> tuple[list, list[float], float]:
    """Every request once; returns [(text, tokens) or the exception, in request order], each request's
    start time (perf_counter) and the seconds it all took. ``on_progress(done)`` after each request."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=300)
    results: list = [None] * args.requests
    started = [0.0] * args.requests
    done = [0]
    lock = threading.Lock()

    def one(i: int) -> None:
        started[i] = time.perf_counter()
        try:
            results[i] = ask(client, i, args.max_tokens)
        except Exception as e:  # noqa: BLE001 (counted and reported)
            results[i] = e
        with lock:
            done[0] += 1
            if on_progress is not None:
                on_progress(done[0])

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, range(args.requests)))
    return results, started, time.perf_counter() - start


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=23100)
    parser.add_argument("--policy", default="cache_aware")
    args, extra = parser.parse_known_args()
    extra += ["--router-policy", args.policy] if args.replicas > 1 else []
    rows, outputs = [], {}
    for n in (1, args.replicas):
        proc = start(n, args.port, extra if n > 1 else [a for a in extra if a not in ("--router-policy", args.policy)])
        try:
            load(args.port, args)  # warm-up
            results, _, seconds = load(args.port, args)
        finally:
            stop(proc)
        failed = [r for r in results if isinstance(r, Exception)]
        tokens = sum(r[1] for r in results if not isinstance(r, Exception))
        outputs[n] = [r[0] if not isinstance(r, Exception) else None for r in results]
        rows.append((n, len(results) - len(failed), len(failed), tokens / seconds))
    print("| replicas | completed | failed | output tok/s |\n| ---: | ---: | ---: | ---: |")
    for n, ok, bad, rate in rows:
        print(f"| {n} | {ok} | {bad} | {rate:.1f} |")
    print(f"ratio {rows[1][3] / rows[0][3]:.2f}x; greedy outputs equal: {outputs[1] == outputs[args.replicas]}")

    proc = start(args.replicas, args.port, extra)
    killed_at = []  # when the last replica was killed (perf_counter)

    def kill_one(done: int) -> None:
        if not killed_at and done >= args.requests // 3:
            os.kill(replica_pid(args.port + args.replicas), signal.SIGKILL)
            killed_at.append(time.perf_counter())

    try:
        results, started, _ = load(args.port, args, kill_one)
    finally:
        stop(proc)
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    after = [i for i in failed if started[i] > killed_at[0]]
    print(
        f"failover: {len(results) - len(failed)} completed, {len(failed)} failed (requests {failed[:10]}: "
        f"{results[failed[0]]!r})"
        if failed
        else f"failover: all {len(results)} completed",
        end="",
    )
    print(f"; failed among the {sum(t > killed_at[0] for t in started)} sent after the kill: {len(after)}")
    if after or outputs[1] != outputs[args.replicas]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
