"""``minivllm serve`` and ``minivllm chat`` as a user runs them: real processes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from minivllm import LLM, SamplingParams
from tests.entrypoints import TEMPLATE, free_port

SMALL = ["--kvcache-block-size", "16", "--max-model-len", "128", "--num-kvcache-blocks", "64"]


def start_serve(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``minivllm serve ARGS`` on a free port, once /health answers; returns the process and its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "minivllm.cli", "serve", *args, "--port", str(port), "--uvicorn-log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the server did not come up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.ConnectError:
            time.sleep(0.2)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> float:
    """Send ``sig`` and wait for the process to exit; returns how long that took."""
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return time.monotonic() - start


def test_serve_command(llama_path, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    # the key from the environment: it never shows on the command line
    proc, base_url = start_serve(
        [llama_path, "--served-model-name", "tiny", "--chat-template", str(template), "--engine-process", *SMALL],
        env={"MINIVLLM_API_KEY": "k"},
    )
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="k", max_retries=0)
        out = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, extra_body={"ignore_eos": True}
        )
        assert out.usage.completion_tokens == 5 and out.choices[0].message.role == "assistant"
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_api_key_sources(tmp_path, monkeypatch):
    from argparse import Namespace

    from minivllm.cli.serve import api_key

    key_file = tmp_path / "key"
    key_file.write_text("  from-the-file \nsecond line\n")
    monkeypatch.setenv("MINIVLLM_API_KEY", "from-the-env")
    assert api_key(Namespace(api_key="from-argv", api_key_file=None)) == "from-argv"
    assert api_key(Namespace(api_key=None, api_key_file=str(key_file))) == "from-the-file"
    assert api_key(Namespace(api_key=None, api_key_file=None)) == "from-the-env"
    monkeypatch.delenv("MINIVLLM_API_KEY")
    assert api_key(Namespace(api_key=None, api_key_file=None)) is None
    with pytest.raises(SystemExit, match="not both"):
        api_key(Namespace(api_key="a", api_key_file=str(key_file)))
    key_file.write_text("\n")
    with pytest.raises(SystemExit, match="holds no key"):
        api_key(Namespace(api_key=None, api_key_file=str(key_file)))


def test_sigterm_ends_streams_in_flight_with_abort(llama_path, tmp_path):
    """SIGTERM with 6 streams and 2 whole-answer requests in flight, each asking for 1,500 tokens: each
    stream ends with a chunk whose finish_reason is "abort" and ``[DONE]``, each whole answer comes back
    with finish_reason "abort", and the process exits at once, not after the requests ran their course."""
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    proc, base_url = start_serve(
        [
            llama_path,
            "--api-key-file",
            str(key_file),
            "--shutdown-grace-period",
            "4",
            "--kvcache-block-size",
            "16",
            "--max-model-len",
            "2048",
            "--engine-process",
        ]
    )
    assert "from-a-file" not in " ".join(proc.args)
    headers = {"Authorization": "Bearer from-a-file"}
    body = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True}
    streams: list[list[dict | str]] = [[] for _ in range(6)]
    wholes: list[httpx.Response] = []
    started = threading.Barrier(len(streams) + 1)

    def stream(events: list):
        with httpx.stream(
            "POST", base_url + "/v1/completions", json={**body, "stream": True}, headers=headers, timeout=60
        ) as r:
            for line in r.iter_lines():
                if line:
                    events.append(line if line == "data: [DONE]" else json.loads(line[len("data: ") :]))
                    if len(events) == 1:
                        started.wait()

    def whole():
        wholes.append(httpx.post(base_url + "/v1/completions", json=body, headers=headers, timeout=60))

    threads = [threading.Thread(target=stream, args=(events,)) for events in streams]
    threads += [threading.Thread(target=whole) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        started.wait(timeout=60)
        while httpx.get(base_url + "/metrics", headers=headers).text.count("num_requests_running{") == 0:
            time.sleep(0.05)
        took = stop(proc, signal.SIGTERM)
    finally:
        proc.kill()
        for t in threads:
            t.join(timeout=60)
    assert proc.returncode == 0 and took < 4, (took, proc.stdout.read())
    for events in streams:
        assert events[-1] == "data: [DONE]" and "error" not in events[-2]
        choices = [e["choices"][0] for e in events[:-1]]
        assert choices[-1]["finish_reason"] == "abort" and all(c["finish_reason"] is None for c in choices[:-1])
        assert len(choices) < 1500
    for response in wholes:
        assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "abort"
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/health")


def test_chat_command_streams_replies(llama_path, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "minivllm.cli",
            "chat",
            "--model",
            llama_path,
            "--chat-template",
            str(template),
            "--max-tokens",
            "4",
            "--system",
            "Be brief.",
            *SMALL,
        ],
        input="Hello\n\nAnd again\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    # one reply per user line (the empty line is skipped), each continuing the conversation
    llm = LLM(llama_path, kvcache_block_size=16, max_model_len=128)
    params = SamplingParams(temperature=0.0, max_tokens=4)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    first = llm.chat(messages, params, chat_template=TEMPLATE, use_tqdm=False)[0]["text"]
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And again"}]
    second = llm.chat(messages, params, chat_template=TEMPLATE, use_tqdm=False)[0]["text"]
    assert run.stdout == f"{first}\n{second}\n"
    with pytest.raises(subprocess.CalledProcessError) as e:
        subprocess.run(
            [sys.executable, "-m", "minivllm.cli", "chat", "--model", llama_path, *SMALL],
            input="Hello\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    assert "no chat template" in e.value.stderr
