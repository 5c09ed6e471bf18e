"""``minivllm serve --data-parallel-size N``: replicas behind sglang-router, as a user runs them; and the
metrics a balancer reads (names and types, as the Gateway API inference extension asks for them)."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from minivllm.entrypoints.replicas import replica_arguments, replica_environments, replica_pid
from tests.entrypoints import TEMPLATE, serving

SMALL = ["--kvcache-block-size", "16", "--max-model-len", "128", "--num-kvcache-blocks", "64"]


def test_replica_arguments_leave_out_what_the_router_owns():
    argv = [
        "m",
        "--host",
        "0.0.0.0",
        "--port=9000",
        "-dp",
        "3",
        "--router-policy",
        "round_robin",
        "--max-num-seqs",
        "8",
        "--data-parallel-size=3",
        "--api-key-file",
        "k",
    ]
    assert replica_arguments(argv) == ["m", "--max-num-seqs", "8", "--api-key-file", "k"]


def test_cpu_replicas_share_the_cores():
    envs = replica_environments(2, 1, "cpu")
    assert [int(e["OMP_NUM_THREADS"]) for e in envs] == [max(1, (os.cpu_count() or 1) // 2)] * 2


def test_balancer_metrics_names_and_types(tiny_engine):
    """The Gateway API inference extension's model-server protocol: queue length and running requests
    as gauges, KV-cache utilisation as a gauge in [0, 1] (README: "Signals a balancer reads")."""
    with serving(tiny_engine) as url:
        text = httpx.get(url + "/metrics").text
        assert httpx.get(url + "/health").status_code == 200
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name in ("minivllm:num_requests_waiting", "minivllm:num_requests_running", "minivllm:kv_cache_usage_perc"):
        assert types[name] == "gauge", name


def test_health_is_503_once_draining(llama_path):
    from tests.entrypoints import tiny_async_llm

    engine = tiny_async_llm(llama_path)
    try:
        with serving(engine) as url:
            assert httpx.get(url + "/health").status_code == 200
            engine.begin_shutdown()
            assert httpx.get(url + "/health").status_code == 503
    finally:
        engine.close()


def _consecutive_free_ports(n: int) -> int:
    """A port P with P..P+n-1 all free, below the ephemeral range (where clients' own ports come from)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 30000)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


def _ask(client: openai.OpenAI, i: int) -> str:
    prompt = f"request {i % 5}"
    if i % 2:
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, stream=i % 4 == 1)
        return "".join(c.choices[0].text for c in out) if i % 4 == 1 else out.choices[0].text
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0
    )
    return out.choices[0].message.content


@pytest.mark.slow
def test_two_replicas_behind_the_router(llama_path, tmp_path):
    pytest.importorskip("sglang_router")
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    port = _consecutive_free_ports(4)  # the router, two replicas, the router's metrics
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minivllm.cli",
            "serve",
            llama_path,
            "--served-model-name",
            "tiny",
            "--chat-template",
            str(template),
            *SMALL,
            "--port",
            str(port),
            "--uvicorn-log-level",
            "warning",
            "--data-parallel-size",
            "2",
            "--router-policy",
            "round_robin",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "MINIVLLM_API_KEY": "k"},
    )  # read by each replica
    base, replicas = f"http://127.0.0.1:{port}", [f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"]
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the replicas did not come up"
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        direct = openai.OpenAI(base_url=replicas[0] + "/v1", api_key="k", max_retries=0)
        expected = [_ask(direct, i) for i in range(10)]  # a single replica's greedy answers
        before = [_finished(url) for url in replicas]
        client = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _ask(client, i), range(40)))
        assert answers == [expected[i % 10] for i in range(40)]
        served = [_finished(url) - b for url, b in zip(replicas, before)]
        assert min(served) > 0 and sum(served) == 40, served  # both replicas took requests

        os.kill(replica_pid(port + 2), signal.SIGKILL)  # one replica dies
        with pytest.raises(httpx.HTTPError):
            httpx.get(replicas[1] + "/health", timeout=2)
        with ThreadPoolExecutor(8) as pool:  # requests after its death all land on the live one
            answers = list(pool.map(lambda i: _ask(client, i), range(20)))
        assert answers == [expected[i % 10] for i in range(20)]

        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - start < 30
        with pytest.raises(LookupError):  # no replica left behind
            replica_pid(port + 1)
    finally:
        if proc.poll() is None:
            proc.kill()


def _finished(url: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": "Bearer k"}).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "minivllm:request_success_total"
    )
