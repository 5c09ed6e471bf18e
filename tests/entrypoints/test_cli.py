"""``minivllm serve`` and ``minivllm chat`` as a user runs them: real processes."""

import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from minivllm import LLM, SamplingParams
from tests.entrypoints import TEMPLATE

SMALL = ["--kvcache-block-size", "16", "--max-model-len", "128", "--num-kvcache-blocks", "64"]


def test_serve_command(llama_path, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "minivllm.cli", "serve", llama_path, "--port", str(port),
                             "--served-model-name", "tiny", "--chat-template", str(template), "--api-key", "k",
                             "--uvicorn-log-level", "warning", *SMALL],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=5, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 5 and out.choices[0].message.role == "assistant"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0


def test_chat_command_streams_replies(llama_path, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    run = subprocess.run([sys.executable, "-m", "minivllm.cli", "chat", "--model", llama_path, "--chat-template",
                          str(template), "--max-tokens", "4", "--system", "Be brief.", *SMALL],
                         input="Hello\n\nAnd again\n", capture_output=True, text=True, timeout=120)
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
        subprocess.run([sys.executable, "-m", "minivllm.cli", "chat", "--model", llama_path, *SMALL],
                       input="Hello\n", capture_output=True, text=True, timeout=120, check=True)
    assert "no chat template" in e.value.stderr
