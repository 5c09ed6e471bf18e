"""The hostile-client cases of ``loadtest.py --hostile``: each runs one attack against the server while an
innocent client streams short completions back to back and /health is read every 50 ms, and reports the
innocent's worst inter-token gap and first-token time, /health's worst latency, and what the attack got
(its HTTP status, the server's memory growth). The attacks, scaled by ``--hostile-tokens``:

- ``never-reading``: two clients that stream n=128 completions with 20 logprobs and never read a byte
  (a 4 kB receive buffer), held until the server aborts them (or a minute), then hang up;
- ``huge-answer``: one non-streamed n=128 answer with 20 logprobs;
- ``fan-out``: the most sequences one request may start (``max_request_sequences``), and 128 prompts x n=128;
- ``stop-strings``: the most stop strings allowed, and 1,000,000 of them;
- ``long-prompts``: clients sending 1M-character prompts back to back (the tokenizer's queue);
- ``idle-connections``: 1,100 connections that never send a byte.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
from serve_process import MODEL_NAME

from minivllm.bench.scrape import scrape

CASES = ("never-reading", "huge-answer", "fan-out", "stop-strings", "long-prompts", "idle-connections")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def raw_post(port: int, body: dict, headers: dict, rcvbuf: int = 4096) -> socket.socket:
    """A POST to /v1/completions on a socket whose receive buffer is small, and which is never read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{head}\r\n".encode()
        + payload
    )
    return s


async def innocent(http: httpx.AsyncClient, stop: asyncio.Event, seen: dict) -> None:
    """Streams of 32 tokens back to back: the worst gap between two chunks, the worst first token."""
    body = {
        "model": MODEL_NAME,
        "prompt": "The cache stores keys and values",
        "max_tokens": 32,
        "ignore_eos": True,
        "stream": True,
    }
    while not stop.is_set():
        start = last = time.perf_counter()
        try:
            async with http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    seen["errors"].append(f"HTTP {response.status_code}")
                    await asyncio.sleep(0.5)
                    continue
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        now = time.perf_counter()
                        key = "ttft" if last == start else "gap"
                        seen[key] = max(seen[key], now - last)
                        last = now
        except httpx.HTTPError as e:
            seen["errors"].append(f"{type(e).__name__}")
            await asyncio.sleep(0.5)


async def health(http: httpx.AsyncClient, stop: asyncio.Event, seen: dict) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            await http.get("/health")
        except httpx.HTTPError as e:
            seen["errors"].append(f"/health {type(e).__name__}")
        seen["health"] = max(seen["health"], time.perf_counter() - start)
        await asyncio.sleep(0.05)


async def attack(case: str, http: httpx.AsyncClient, port: int, headers: dict, tokens: int, seen: dict) -> None:
    n128 = {
        "model": MODEL_NAME,
        "prompt": "Once upon a time",
        "n": 128,
        "max_tokens": tokens,
        "logprobs": 20,
        "ignore_eos": True,
    }
    if case == "never-reading":
        aborts = 'request_success_total{finished_reason="abort"}'
        before = (await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}", headers))[aborts]
        socks = [raw_post(port, {**n128, "stream": True}, headers) for _ in range(2)]
        start = time.perf_counter()
        while time.perf_counter() - start < 60:  # until the buffer bound aborts them both, or a minute
            after = (await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}", headers))[aborts]
            if after - before == 256:
                break
            await asyncio.sleep(0.5)
        seen["attack"] = (
            f"2 clients: {after - before:.0f} of 256 completions aborted unread after "
            f"{time.perf_counter() - start:.0f} s, then the hang-up"
        )
        for s in socks:
            s.close()  # the hang-up
        await asyncio.sleep(3)
    elif case == "huge-answer":
        response = await http.post("/v1/completions", json=n128)
        seen["attack"] = f"HTTP {response.status_code}, {len(response.content) / 2**20:.1f} MB"
    elif case == "fan-out":
        refused = await http.post("/v1/completions", json={**n128, "prompt": ["a b c"] * 128, "logprobs": None})
        response = await http.post("/v1/completions", json={**n128, "prompt": ["a b c"] * 2, "logprobs": None})
        seen["attack"] = f"128x128: HTTP {refused.status_code}; 2x128: HTTP {response.status_code}"
    elif case == "stop-strings":
        body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": tokens, "ignore_eos": True, "n": 8}
        refused = await http.post("/v1/completions", json={**body, "stop": [f"zq{i}" for i in range(1_000_000)]})
        response = await http.post("/v1/completions", json={**body, "stop": [f"zq{i:062d}" for i in range(64)]})
        seen["attack"] = f"1M stops: HTTP {refused.status_code}; 64 x 64 chars: HTTP {response.status_code}"
    elif case == "long-prompts":
        text = "The capital of France is Paris. " * 31_250  # 1M characters

        async def sender() -> list[int]:
            codes = []
            for _ in range(3):
                codes.append((await http.post("/v1/completions", json={"prompt": text, "max_tokens": 1})).status_code)
            return codes

        codes = sum(await asyncio.gather(*(sender() for _ in range(4))), [])
        seen["attack"] = ", ".join(f"{codes.count(c)}x HTTP {c}" for c in sorted(set(codes)))
    elif case == "idle-connections":
        socks = []
        for _ in range(1100):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            socks.append(s)
        await asyncio.sleep(20)
        refused = 0
        for s in socks:
            try:
                refused += s.recv(12) == b"HTTP/1.1 503"
            except OSError:
                pass
            s.close()
        seen["attack"] = f"{refused} of 1100 answered 503"
    else:
        raise SystemExit(f"unknown case {case!r}; known: {', '.join(CASES)}")


async def run_case(case: str, base_url: str, port: int, headers: dict, pid: int, tokens: int) -> dict:
    seen = {"gap": 0.0, "ttft": 0.0, "health": 0.0, "errors": [], "attack": ""}
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300, limits=limits) as http:
        tasks = [asyncio.create_task(innocent(http, stop, seen)), asyncio.create_task(health(http, stop, seen))]
        await asyncio.sleep(2)  # the innocent's own figures first
        rss_before, peak = rss_mb(pid), 0.0
        watching = True

        async def watch() -> None:
            nonlocal peak
            while watching:
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        start = time.perf_counter()
        await attack(case, http, port, headers, tokens, seen)
        took = time.perf_counter() - start
        await asyncio.sleep(2)
        watching = False
        await watcher
        stop.set()
        await asyncio.gather(*tasks)
    return {
        "case": case,
        "attack": seen["attack"],
        "attack_s": round(took, 1),
        "innocent_worst_gap_s": round(seen["gap"], 2),
        "innocent_worst_ttft_s": round(seen["ttft"], 2),
        "health_worst_s": round(seen["health"], 2),
        "rss_growth_mb": round(peak - rss_before),
        "innocent_errors": len(seen["errors"]),
        "first_errors": seen["errors"][:3],
    }


def report(rows: list[dict]) -> None:
    print(
        "\n| case | attack | attack (s) | innocent worst gap (s) | innocent worst TTFT (s) | /health worst (s) "
        "| server RSS growth (MB) | innocent errors |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['case']} | {r['attack']} | {r['attack_s']} | {r['innocent_worst_gap_s']} "
            f"| {r['innocent_worst_ttft_s']} | {r['health_worst_s']} | {r['rss_growth_mb']} "
            f"| {r['innocent_errors']} |"
        )
