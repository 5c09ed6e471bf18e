"""What one hostile client can cost the others, bounded: a stream it never reads (its unread output is
capped and the request aborted), the sequences and stop strings one request may ask for, the tokenizer's
queue (shortest job first, its characters capped), work on the event loop that grows with a request
(a large body, a large whole answer: /health answers meanwhile), and the connections it may hold open
(an idle timeout, a cap)."""

import asyncio
import json
import socket
import threading
import time

import httpx
import openai
import pytest

from tests.entrypoints import MODEL, NO_EOS, TEMPLATE, free_port, health_while, scrape, serving


@pytest.fixture(scope="module")
def small(tiny_engine):
    """The base URL of a server with small bounds on sequences and stop strings."""
    with serving(
        tiny_engine, chat_template=TEMPLATE, max_request_sequences=6, max_stop=3, max_stop_chars=20
    ) as base_url:
        yield base_url


def client_of(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=60)


def asgi_post(app, path: str, body: dict, never_read: bool):
    """POST ``body`` to the ASGI ``app`` directly; with ``never_read``, the client takes the response's
    headers and first chunk, then never reads again (``send`` never returns), as a client whose socket
    buffers are full. Returns the task running the app and the messages sent."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
    }
    pending, sent = [{"type": "http.request", "body": raw, "more_body": False}], []

    async def receive():
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # the client never hangs up

    async def send(message):
        sent.append(message)
        if never_read and message["type"] == "http.response.body":
            await asyncio.Event().wait()

    return asyncio.create_task(app(scope, receive, send)), sent


def test_a_stream_never_read_is_aborted_past_its_buffer(small, tiny_engine):
    """4 completions of 100 tokens with 5 logprobs, never read: at most 60 tokens (x6 with the logprobs)
    wait unread, then the request is aborted and its blocks freed (unbounded, it ran to its length)."""
    from minivllm.entrypoints.api_server import build_app
    from minivllm.entrypoints.settings import ServerSettings

    base_url = small
    before = scrape(base_url)
    app = build_app(tiny_engine, ServerSettings(max_stream_buffer=60))
    body = {"prompt": "Hi", "n": 4, "max_tokens": 100, "logprobs": 5, "stream": True, **NO_EOS}

    async def main():
        task, sent = asgi_post(app, "/v1/completions", body, never_read=True)
        deadline = time.monotonic() + 60
        while True:
            m = await asyncio.to_thread(scrape, base_url)
            ended = sum(
                m[f'request_success_total{{finished_reason="{r}"}}']
                - before[f'request_success_total{{finished_reason="{r}"}}']
                for r in ("abort", "length")
            )
            if ended == 4 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        return m, sent

    after, sent = asyncio.run(main())
    assert sent[0]["status"] == 200
    key = 'request_success_total{finished_reason="abort"}'
    aborted = after[key] - before[key]
    assert aborted == 4, "the stream's output was buffered without bound"
    assert after["kv_cache_used_blocks"] == 0 and after["num_requests_running"] == 0


def test_a_stream_read_slowly_past_its_buffer_ends_with_an_error(tiny_engine):
    """The same bound seen by the reader of AsyncLLM.generate: StreamBufferFullError once it reads again."""
    from minivllm.core.sampling_params import SamplingParams
    from minivllm.entrypoints.output_queue import StreamBufferFullError

    async def main():
        params = SamplingParams(max_tokens=60, ignore_eos=True, logprobs=2)
        stream = tiny_engine.generate([1, 2, 3], params, "slow-reader", max_buffered=30)
        first = await anext(stream)
        while tiny_engine.stats()["running"]:  # the request ends (aborted) while nobody reads
            await asyncio.sleep(0.02)
        with pytest.raises(StreamBufferFullError, match="more than the limit of 30; the request was aborted"):
            async for _ in stream:
                pass
        return first

    assert asyncio.run(main()).num_output_tokens >= 1
    assert tiny_engine.stats()["kv_used"] == 0


def test_sequences_per_request_are_bounded(small):
    client = client_of(small)
    out = client.completions.create(model=MODEL, prompt=["a", "b", "c"], n=2, max_tokens=1, extra_body=NO_EOS)
    assert len(out.choices) == 6
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=["a", "b", "c"], n=3, max_tokens=1)
    assert e.value.body["message"] == "3 prompts with n=3 make 9 sequences, more than the limit of 6 per request"
    assert e.value.body["param"] == "n"


@pytest.mark.parametrize(
    "extra, message, param",
    [
        ({"stop": ["a", "b", "c", "d"]}, "stop has 4 entries, more than the limit of 3", "stop"),
        ({"stop_token_ids": [1, 2, 3, 4]}, "stop_token_ids has 4 entries, more than the limit of 3", "stop_token_ids"),
        ({"stop": ["x" * 12, "y" * 9]}, "the stop strings have 21 characters, more than the limit of 20", "stop"),
    ],
)
def test_stop_work_is_bounded(small, extra, message, param):
    client = client_of(small)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, extra_body=extra
        )
    assert (e.value.body["message"], e.value.body["param"]) == (message, param)
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=1, stop=["x" * 11, "y" * 9])  # 20: in bounds


LONG = "The capital of France is Paris. " * 40_000  # 1.3 M characters: about a second to tokenize


def test_a_short_prompt_is_tokenized_before_waiting_long_ones(tiny_engine):
    """Two long prompts, then a short one: the short one waits for the long one being tokenized, not for
    the one queued before it."""

    async def main(base_url):
        done = {}
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:

            async def post(name, prompt):
                response = await http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
                done[name] = time.perf_counter()
                return response

            first = asyncio.create_task(post("long 1", LONG))
            await asyncio.sleep(0.3)
            second = asyncio.create_task(post("long 2", LONG))
            await asyncio.sleep(0.3)
            short = await post("short", "Hi")
            await asyncio.gather(first, second)
        return short, done

    with serving(tiny_engine, max_prompt_chars=2_000_000, max_body_bytes=4 * 2**20) as base_url:
        short, done = asyncio.run(main(base_url))
    assert short.status_code == 200
    assert done["short"] < done["long 2"], done


def test_the_tokenizer_queue_is_bounded(tiny_engine):
    async def main(base_url):
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            first = asyncio.create_task(http.post("/v1/completions", json={"prompt": LONG, "max_tokens": 1}))
            await asyncio.sleep(0.3)
            refused = await http.post("/v1/completions", json={"prompt": LONG, "max_tokens": 1})
            short = await http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
            return refused, short, await first

    with serving(
        tiny_engine, max_prompt_chars=2_000_000, max_tokenizing_chars=1_500_000, max_body_bytes=4 * 2**20
    ) as base_url:
        refused, short, first = asyncio.run(main(base_url))
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "ServiceUnavailableError"
    assert "busy tokenizing" in refused.json()["error"]["message"]
    assert short.status_code == 200 and first.status_code == 400  # tokenized: too long for max_model_len


def test_a_large_body_is_parsed_off_the_event_loop(tiny_engine, monkeypatch):
    """16 MB of token ids took the event loop for seconds. Parsing is made to take a second longer here,
    so a parse on the loop would hold /health for a second whatever this machine's speed; off the loop,
    /health answers meanwhile."""
    from minivllm.entrypoints import request_body

    def slow_parse(raw, model, parse=request_body.parse):
        time.sleep(1.0)
        return parse(raw, model)

    monkeypatch.setattr(request_body, "parse", slow_parse)
    content = b'{"max_tokens": 1, "prompt": [' + b"12345, " * 2_300_000 + b"1]}"
    with serving(tiny_engine) as base_url:
        response, took, latencies = health_while(
            base_url, {"content": content, "headers": {"Content-Type": "application/json"}}
        )
    assert took > 1.0 and len(latencies) > 5 and max(latencies) < 0.5, (max(latencies), took)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_a_large_answer_is_built_off_the_event_loop(tiny_engine):
    """128 completions of 100 tokens with 20 logprobs each (16 MB of JSON): /health answers while the
    answer is built and encoded, not only once it is sent."""
    body = {"prompt": "Hi", "n": 128, "max_tokens": 100, "logprobs": 20, **NO_EOS}
    with serving(tiny_engine) as base_url:
        response, took, latencies = health_while(base_url, {"json": body})
    assert response.status_code == 200 and len(response.json()["choices"]) == 128
    assert len(response.json()["choices"][127]["logprobs"]["top_logprobs"]) == 100
    assert max(latencies) < 0.25, (max(latencies), took)


def guarded_server(engine, **settings):
    """The app served as ``serve`` does (the connection cap and idle timeout), in a thread."""
    import contextlib

    import uvicorn

    from minivllm.entrypoints.api_server import build_app, server_config
    from minivllm.entrypoints.settings import ServerSettings

    @contextlib.contextmanager
    def run():
        s = ServerSettings(**settings)
        port = free_port()
        server = uvicorn.Server(server_config(build_app(engine, s), s, "127.0.0.1", port, "warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            yield port
        finally:
            server.should_exit = True
            thread.join(timeout=30)

    return run()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading what it sends until then)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_are_closed(tiny_engine):
    with guarded_server(tiny_engine, idle_timeout=0.5) as port:
        start = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # closed while its headers trickle in
            for byte in b"GET /health HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 20:  # a byte at a time, never ended
                slow.sendall(bytes([byte]))
                time.sleep(0.02)
        assert closed_within(silent, 3), "an idle connection was kept open"
        assert time.monotonic() - start < 2.5
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


def test_connections_are_capped(tiny_engine):
    with guarded_server(tiny_engine, max_connections=4) as port:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"ServiceUnavailableError" in answer
        assert closed_within(extra, 5)
        for s in idle:
            s.close()
        time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
