"""The OpenAI-compatible server, driven by the official ``openai`` client over real HTTP on 127.0.0.1."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from tests.checkpoints import hf_greedy
from tests.entrypoints import MODEL, NO_EOS, TEMPLATE, scrape, serving, tiny_async_llm

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ABORTED = 'request_success_total{finished_reason="abort"}'
LENGTH = 'request_success_total{finished_reason="length"}'


@pytest.fixture(scope="module")
def server(llama_path, async_scheduling):
    """The tiny engine behind the server, with each step pipeline: every test here runs with both."""
    engine = tiny_async_llm(llama_path, async_scheduling=async_scheduling)
    with serving(engine, api_key=API_KEY, chat_template=TEMPLATE) as base_url:
        yield base_url, engine
    engine.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def metrics(base_url: str) -> dict[str, float]:
    return scrape(base_url, AUTH)


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server[0] + "/health").status_code == 200
    m = metrics(server[0])
    assert m["kv_cache_total_blocks"] == 160 and m["kv_cache_used_blocks"] == 0
    assert m["num_requests_running"] == 0 and m["kv_cache_usage_perc"] == 0


def test_completion_matches_transformers(server, client, llama_path):
    prompt = "The capital of France is"
    ids = server[1].tokenizer.encode(prompt)
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0.0, extra_body=NO_EOS)
    expected = hf_greedy(llama_path, [ids], 10)[0]
    assert out.choices[0].text == server[1].tokenizer.decode(expected, skip_special_tokens=True)
    assert out.choices[0].finish_reason == "length" and out.model == MODEL and out.object == "text_completion"
    usage = out.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (len(ids), 10, len(ids) + 10)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0.0, extra_body=NO_EOS)
    assert by_ids.choices[0].text == out.choices[0].text


def test_streamed_completion_equals_whole(server, client):
    kw = dict(
        model=MODEL,
        prompt=["Once upon a time", "A paged KV cache"],
        max_tokens=16,
        temperature=0.9,
        seed=11,
        n=2,
        extra_body=NO_EOS,
    )
    whole = client.completions.create(**kw)
    texts, usage, finish = {}, None, {}
    for chunk in client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
            assert not chunk.choices
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            finish[c.index] = c.finish_reason
    assert len(whole.choices) == 4 and len(set(texts.values())) == 4
    assert texts == {c.index: c.text for c in whole.choices}
    assert finish == {i: "length" for i in range(4)}
    assert usage.completion_tokens == whole.usage.completion_tokens == 64
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_raw_stream_ends_with_done(server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 3, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server[0] + "/v1/completions", json=body, headers=AUTH) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and len(events) == 4
    assert all(json.loads(e[len("data: ") :])["object"] == "text_completion" for e in events[:-1])


def test_chat_whole_and_streamed(server, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The capital of France?"}]
    kw = dict(model=MODEL, messages=messages, max_tokens=12, temperature=0.7, seed=5, extra_body=NO_EOS)
    whole = client.chat.completions.create(**kw)
    msg = whole.choices[0].message
    assert msg.role == "assistant" and whole.object == "chat.completion" and whole.usage.completion_tokens == 12
    rendered = "<system>Be brief.\n<user>The capital of France?\n<assistant>"
    assert whole.usage.prompt_tokens == len(server[1].tokenizer.encode(rendered, add_special_tokens=False))
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_logprobs_in_both_formats(server, client):
    out = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, temperature=0.0, logprobs=2, extra_body=NO_EOS
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=3,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
        extra_body=NO_EOS,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 3 for c in content)
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)


def test_stop_strings_over_http(server, client):
    full = (
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=30, temperature=0.0, extra_body=NO_EOS
        )
        .choices[0]
        .text
    )
    k = next(i for i in range(5, len(full) - 1) if full[i : i + 2].isascii() and full[i : i + 2].isalpha())
    stop = full[k : k + 2]
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=30, temperature=0.0, stop=[stop], extra_body=NO_EOS)
    whole = client.completions.create(**kw).choices[0]
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True))
    assert whole.text == streamed == full[: full.index(stop)] and whole.finish_reason == "stop"


def test_32_concurrent_streams_are_batched(server, llama_path):
    base_url, engine = server
    prompts = [f"Client {i} says the capital of France is" for i in range(32)]
    expected = hf_greedy(llama_path, [engine.tokenizer.encode(p) for p in prompts], 12)
    aclient = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)

    async def one(prompt):
        text, reason = "", None
        stream = await aclient.completions.create(
            model=MODEL, prompt=prompt, max_tokens=12, temperature=0.0, stream=True, extra_body=NO_EOS
        )
        async for chunk in stream:
            text += chunk.choices[0].text
            reason = chunk.choices[0].finish_reason or reason
        return text, reason

    async def run_all():
        try:
            return await asyncio.gather(*[one(p) for p in prompts])
        finally:
            await aclient.close()

    results = asyncio.run(run_all())
    for (text, reason), tokens in zip(results, expected):
        assert text == engine.tokenizer.decode(tokens, skip_special_tokens=True) and reason == "length"
    m = metrics(base_url)
    assert m['batch_size_bucket{le="1.0"}'] < m["batch_size_count"]  # a step sampled > 1
    assert m["kv_cache_used_blocks"] == 0 and m["time_to_first_token_seconds_count"] >= 32


def test_disconnected_clients_free_their_blocks(server):
    """Six clients hang up after two events: their requests are aborted and free their blocks. A request
    may still end by length first (the tiny model's 100 tokens can all be sent before the server meets the
    closed socket), so each of the six ends one way or the other, and at least one by the hang-up."""
    base_url = server[0]
    start = metrics(base_url)
    before = start[ABORTED] + start.get(LENGTH, 0)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 100, "stream": True, "ignore_eos": True}

    def read_two_then_hang_up():
        with httpx.stream("POST", base_url + "/v1/completions", json=body, headers=AUTH, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(2):
                next(line for line in lines if line)

    threads = [threading.Thread(target=read_two_then_hang_up) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    deadline = time.monotonic() + 20
    while (m := metrics(base_url))[ABORTED] + m.get(LENGTH, 0) < before + 6 or m["kv_cache_used_blocks"] > 0:
        assert time.monotonic() < deadline, f"requests did not end: {m}"
        time.sleep(0.1)
    assert m[ABORTED] > start[ABORTED]
    assert m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0


def test_bad_requests_get_openai_errors(server, client):
    base_url = server[0]
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    r = httpx.post(base_url + "/v1/completions", content=b'{"model": "tiny", "prompt": ', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=-1)
    with pytest.raises(openai.NotFoundError, match="gpt-4"):
        client.completions.create(model="gpt-4", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="too long"):
        client.completions.create(model=MODEL, prompt=[5] * 200, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="too long"):
        client.completions.create(model=MODEL, prompt=[5] * 200, max_tokens=2, stream=True)
    wrong = openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(base_url + "/v1/models").status_code == 401
    # still serving, and nothing leaked
    out = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, extra_body=NO_EOS)
    assert out.usage.completion_tokens == 3
    assert metrics(base_url)["kv_cache_used_blocks"] == 0


def test_non_streaming_client_that_hangs_up_is_aborted(server):
    base_url = server[0]
    before = metrics(base_url)[ABORTED]
    body = {"model": MODEL, "prompt": [f"Story {i}" for i in range(8)], "max_tokens": 100, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base_url + "/v1/completions", json=body, headers=AUTH, timeout=httpx.Timeout(60, read=0.05))
    deadline = time.monotonic() + 20
    while (m := metrics(base_url))[ABORTED] < before + 8 or m["kv_cache_used_blocks"] > 0:
        assert time.monotonic() < deadline, f"requests were not aborted: {m}"
        time.sleep(0.05)


def test_requests_after_shutdown_began_get_503(llama_path):
    from minivllm.entrypoints import AsyncLLM

    engine = AsyncLLM(llama_path, kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=32, engine_process=True)
    try:
        with serving(engine) as base_url:
            engine.begin_shutdown()
            response = httpx.post(base_url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    finally:
        engine.close()
    assert response.status_code == 503 and response.json()["error"] == {
        "message": "the server is shutting down",
        "type": "ServiceUnavailableError",
        "param": None,
        "code": 503,
    }
