import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx

from minivllm.bench.scrape import scrape  # noqa: F401 (/metrics as a dict)

MODEL = "tiny"  # the served name of conftest's tiny_engine

# A chat template for the tiny checkpoints, whose tokenizer has none: "<role>content" lines, then "<assistant>".
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serving(engine, **settings):
    """:func:`running` for the app that serves ``engine`` with ``ServerSettings(**settings)``."""
    from minivllm.entrypoints.api_server import build_app
    from minivllm.entrypoints.settings import ServerSettings

    return running(build_app(engine, ServerSettings(**settings)))


def tiny_async_llm(llama_path: str, **settings):
    """An AsyncLLM of the tiny Llama, served as "tiny" (blocks of 16 tokens, 160 of them, max_model_len 128)."""
    from minivllm.entrypoints import AsyncLLM

    return AsyncLLM(
        llama_path,
        served_model_name=MODEL,
        kvcache_block_size=16,
        max_model_len=128,
        num_kvcache_blocks=160,
        engine_process=True,
        **settings,
    )


def health_while(base_url: str, request: dict) -> tuple[httpx.Response, float, list[float]]:
    """POST ``request``; meanwhile /health, again and again. Returns the response, how long it took and
    each /health's latency."""

    async def main():
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            big = asyncio.create_task(http.post("/v1/completions", **request))
            start, latencies = time.perf_counter(), []
            while not big.done():
                t = time.perf_counter()
                assert (await http.get("/health")).status_code == 200
                latencies.append(time.perf_counter() - t)
                await asyncio.sleep(0.01)
            return await big, time.perf_counter() - start, latencies

    return asyncio.run(main())


NO_EOS = {"ignore_eos": True}  # vLLM's extra field: the tiny model's EOS would end outputs at random


def openai_error(response: httpx.Response, status: int, kind: str) -> dict:
    """The error of an OpenAI error body, after checking its shape: nothing but ``error``, with the four
    fields OpenAI's clients read."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == kind and body["error"]["code"] == status
    assert "input_value" not in body["error"]["message"] and "pydantic" not in body["error"]["message"]
    return body["error"]


def post_raw(base_url: str, content: bytes, path: str = "/v1/completions") -> httpx.Response:
    return httpx.post(base_url + path, content=content, headers={"Content-Type": "application/json"})
