"""The work one request can ask for is bounded, each bound a setting with a clear error: ``n``, prompts
per request, prompt characters (checked before tokenizing) and body bytes. Tokenizing runs off the event
loop, so a long prompt stalls no other request."""

import time

import httpx
import openai
import pytest

from tests.entrypoints import MODEL, NO_EOS, TEMPLATE, health_while, scrape, serving


@pytest.fixture(scope="module")
def small(tiny_engine):
    """A server with small limits, and an openai client of it."""
    with serving(
        tiny_engine, chat_template=TEMPLATE, max_n=4, max_prompts=3, max_prompt_chars=500, max_body_bytes=20_000
    ) as base_url:
        yield base_url, openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_defaults():
    from minivllm.entrypoints.settings import ServerSettings

    s = ServerSettings()
    assert (s.max_n, s.max_prompts, s.max_prompt_chars, s.max_body_bytes) == (128, 128, 1_000_000, 16 * 2**20)


def test_n_is_bounded(small):
    _, client = small
    out = client.completions.create(model=MODEL, prompt="Hi", n=4, max_tokens=2, extra_body=NO_EOS)
    assert len(out.choices) == 4
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", n=5, max_tokens=2)
    assert (e.value.body["message"], e.value.body["param"]) == ("n must be at most 4", "n")
    with pytest.raises(openai.BadRequestError, match="n must be at most 4"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=50000)


def test_prompts_per_request_are_bounded(small):
    _, client = small
    out = client.completions.create(model=MODEL, prompt=["a", "b", "c"], max_tokens=2, extra_body=NO_EOS)
    assert len(out.choices) == 3
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=[[1, 2]] * 4, max_tokens=2)
    assert (e.value.body["message"], e.value.body["param"]) == ("at most 3 prompts per request, got 4", "prompt")


def test_prompt_characters_are_checked_before_tokenizing(small):
    _, client = small
    with pytest.raises(openai.BadRequestError, match="prompt of 500 tokens is too long"):  # tokenized: in limits
        client.completions.create(model=MODEL, prompt="x" * 500, max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=["Hi", "x" * 501], max_tokens=1)
    assert e.value.body["message"] == "prompt 1 has 501 characters, more than the limit of 500"
    assert e.value.body["param"] == "prompt"
    messages = [{"role": "system", "content": "s" * 300}, {"role": "user", "content": "u" * 201}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert e.value.body["message"] == "the messages have 501 characters, more than the limit of 500"
    assert e.value.body["param"] == "messages"


def test_long_prompt_is_refused_without_tokenizing(tiny_engine):
    text = "The capital of France is Paris. " * 40_000  # 1.3 M characters
    start = time.perf_counter()
    tiny_engine.tokenizer.encode(text)
    tokenizing = time.perf_counter() - start
    with serving(tiny_engine, max_prompt_chars=1000, max_body_bytes=4 * 2**20) as base_url:
        start = time.perf_counter()
        response = httpx.post(base_url + "/v1/completions", json={"prompt": text, "max_tokens": 1}, timeout=60)
        refusing = time.perf_counter() - start
    assert response.status_code == 400 and "more than the limit of 1000" in response.json()["error"]["message"]
    assert refusing < tokenizing / 2, (refusing, tokenizing)


def test_body_bytes_are_bounded(small):
    base_url, _ = small
    headers = {"Content-Type": "application/json"}
    body = b'{"prompt": [' + b"1, " * 8_000 + b'1], "max_tokens": 1}'  # 24 kB: over the 20 kB limit
    expected = {
        "error": {
            "message": "the request body is larger than the limit of 20000 bytes",
            "type": "RequestTooLargeError",
            "param": None,
            "code": 413,
        }
    }
    response = httpx.post(base_url + "/v1/completions", content=body, headers=headers)  # with Content-Length
    assert response.status_code == 413 and response.json() == expected

    def chunks():  # no Content-Length: the bytes are counted as they come
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = httpx.post(base_url + "/v1/completions", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and response.json() == expected
    small_body = b'{"prompt": [1, 2, 3], "max_tokens": 2, "ignore_eos": true}'

    def small_chunks():
        yield small_body[:10]
        yield small_body[10:]

    response = httpx.post(base_url + "/v1/completions", content=small_chunks(), headers=headers)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
    assert scrape(base_url)["kv_cache_used_blocks"] == 0


def test_tokenizing_runs_off_the_event_loop(tiny_engine, monkeypatch):
    """A prompt of 1.3 M characters takes about a second to tokenize, and tokenizing is made to take a
    second longer here, so on the event loop it would hold /health for seconds on any machine; off the
    loop, /health still answers at once."""
    text = "The capital of France is Paris. " * 40_000

    def slow_encode(*args, encode=tiny_engine.tokenizer.encode, **kwargs):
        time.sleep(1.0)
        return encode(*args, **kwargs)

    monkeypatch.setattr(tiny_engine.tokenizer, "encode", slow_encode)
    with serving(tiny_engine, max_prompt_chars=2_000_000, max_body_bytes=4 * 2**20) as base_url:
        response, took, latencies = health_while(base_url, {"json": {"prompt": text, "max_tokens": 1}})
        assert response.status_code == 400 and "too long" in response.json()["error"]["message"]
        assert took > 1.0 and len(latencies) > 5 and max(latencies) < 0.5, (max(latencies), took)
