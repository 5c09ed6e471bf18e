"""Faults across the engine-core process boundary: a killed engine process fails every stream, /health
turns 503 and ``minivllm serve`` exits; closing leaves no process, pipe or block behind."""

import asyncio
import json
import os
import signal
import threading
import time

import httpx
import pytest

from minivllm import SamplingParams
from tests.entrypoints import serving, tiny_async_llm
from tests.entrypoints.test_cli import SMALL, start_serve


def children(pid: int) -> set[int]:
    """The live engine processes that ``pid`` spawned (from /proc; multiprocessing's resource tracker, a
    helper that lives as long as its parent, is not one)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        with open(f"/proc/{entry}/cmdline", "rb") as f:
            spawned = b"spawn_main" in f.read()
        if int(fields[1]) == pid and fields[0] != "Z" and spawned:
            found.add(int(entry))
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_leaves_no_process_pipe_or_block(llama_path):
    fds = []
    for _ in range(2):  # the first one may start multiprocessing's resource tracker, which stays
        engine = tiny_async_llm(llama_path)
        assert children(os.getpid()) == {engine._core.pid}

        async def main(engine=engine):
            params = SamplingParams(max_tokens=4, ignore_eos=True)
            return [out async for out in engine.generate([1, 2, 3], params, "r")]

        assert asyncio.run(main())[-1].finish_reason == "length" and engine.stats()["kv_used"] == 0
        engine.close()
        assert not children(os.getpid())
        fds.append(open_fds())
    assert fds[0] == fds[1]


def test_a_killed_engine_process_fails_every_stream_and_health(llama_path):
    engine = tiny_async_llm(llama_path)
    dead = threading.Event()
    engine.on_engine_dead = dead.set
    try:
        with serving(engine) as base_url:

            async def main():
                async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:

                    async def stream():
                        body = {"prompt": [1, 2, 3], "max_tokens": 100, "ignore_eos": True, "stream": True}
                        async with http.stream("POST", "/v1/completions", json=body) as r:
                            return [line async for line in r.aiter_lines() if line]

                    streams = [asyncio.create_task(stream()) for _ in range(3)]
                    while engine.stats()["running"] < 3:
                        await asyncio.sleep(0.01)
                    os.kill(engine._core.pid, signal.SIGKILL)
                    events = await asyncio.gather(*streams)
                    return (
                        events,
                        (await http.get("/health")).status_code,
                        await http.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}),
                    )

            events, health, late = asyncio.run(main())
        for lines in events:
            assert lines[-1] == "data: [DONE]"
            assert "engine process died" in json.loads(lines[-2][len("data: ") :])["error"]["message"]
        assert health == 503 and late.status_code == 503 and dead.is_set() and engine.dead
        with pytest.raises(RuntimeError, match="died"):
            engine.generate([1], SamplingParams(), "late")
    finally:
        engine.close()
    assert not children(os.getpid())


def test_serve_exits_when_its_engine_process_is_killed(llama_path):
    proc, base_url = start_serve([llama_path, "--engine-process", *SMALL])
    try:
        [core] = children(proc.pid)
        events: list[str] = []

        def stream():
            body = {"prompt": "Hi", "max_tokens": 120, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", base_url + "/v1/completions", json=body, timeout=60) as r:
                events.extend(line for line in r.iter_lines() if line)

        thread = threading.Thread(target=stream)
        thread.start()
        while not events:
            time.sleep(0.01)
        os.kill(core, signal.SIGKILL)
        thread.join(timeout=60)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    output = proc.stdout.read()
    assert proc.returncode == 1 and "the engine process died" in output, output
    assert events[-1] == "data: [DONE]" and "error" in events[-2]
    assert not children(proc.pid)
