"""Every error the server answers is an OpenAI error body with a short message naming the field: bodies
that are no JSON, unknown routes and methods, wrong types, bad chat messages, ``max_tokens`` beyond the
context and fields minivllm does not implement. Through the ``openai`` client where it can send the
request, raw HTTP where it cannot."""

import httpx
import openai
import pytest

from tests.entrypoints import MODEL, NO_EOS, TEMPLATE, openai_error, post_raw, scrape, serving

MAX_MODEL_LEN = 128  # tiny_engine's


@pytest.fixture(scope="module")
def server(tiny_engine):
    with serving(tiny_engine, chat_template=TEMPLATE) as base_url:
        yield base_url, tiny_engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"model": "tiny", "prompt": ', "the body is not valid JSON: Expecting value (character 28)"),
        (b'{"prompt": "caf\xe9"}', "the body could not be parsed: it must be JSON in UTF-8"),  # Latin-1, not UTF-8
        (b'["a list"]', "the body must be a JSON object"),
    ],
)
def test_bodies_that_are_no_json_object(server, content, message):
    assert openai_error(post_raw(server[0], content), 400, "BadRequestError")["message"] == message


def test_unknown_routes_and_wrong_methods(server):
    error = openai_error(httpx.post(server[0] + "/v1/embeddings", json={}), 404, "NotFoundError")
    assert error["message"] == "no route /v1/embeddings"
    response = httpx.get(server[0] + "/v1/completions")
    error = openai_error(response, 405, "MethodNotAllowedError")
    assert error["message"] == "GET is not allowed on /v1/completions" and response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", "hot", "temperature: Input should be a valid number"),
        ("n", 1.5, "n: Input should be a valid integer"),
        ("stop", 5, "stop: must be a string or a list of strings"),
        (
            "prompt",
            {"text": "Hi"},
            "prompt: must be a string, a list of token ids, or a list of strings or of token-id lists",
        ),
        ("stream_options", "yes", "stream_options: must be a JSON object"),
    ],
)
def test_wrong_types_name_the_field(client, field, value, message):
    kwargs = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, field: value}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**kwargs)
    assert e.value.body["message"] == message and e.value.body["param"] == field


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "repetition_penalty"])
@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_infinite_and_nan_floats_are_refused(server, field, value):
    # JSON has no infinity, but Python's parser (and so FastAPI's) reads these words as floats
    content = f'{{"model": "tiny", "prompt": "Hi", "max_tokens": 2, "{field}": {value}}}'.encode()
    error = openai_error(post_raw(server[0], content), 400, "BadRequestError")
    assert error["message"] == f"{field}: Input should be a finite number" and error["param"] == field


def test_out_of_range_values_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=-1)
    assert e.value.body["message"] == "temperature: Input should be greater than or equal to 0"
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"min_tokens": -1})
    assert e.value.body["message"] == "min_tokens: Input should be greater than or equal to 0"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, logprobs=21)
    assert e.value.body["message"] == "logprobs: Input should be less than or equal to 20"
    with pytest.raises(openai.BadRequestError) as e:  # it would overflow the logits to inf (token 0 forever)
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"repetition_penalty": 1e-40})
    assert e.value.body["message"] == "repetition_penalty: Input should be greater than or equal to 0.01"
    assert e.value.body["param"] == "repetition_penalty"
    with pytest.raises(openai.BadRequestError) as e:  # a field the engine checks, named by the engine
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"stop_token_ids": [10**12]})
    assert e.value.body["message"] == "stop token id 1000000000000 is outside the vocabulary [0, 512)"


@pytest.mark.parametrize(
    "message, error",
    [
        (
            {"role": "function", "content": "42"},
            "messages[1].role: Input should be 'system', 'user', 'assistant' or 'tool'",
        ),
        (
            {"role": "robot", "content": "Hi"},
            "messages[1].role: Input should be 'system', 'user', 'assistant' or 'tool'",
        ),
        ({"role": "user"}, "messages[1].content: Field required"),
        (
            {"role": "user", "content": None},
            "messages[1].content: must be a string or a list of {'type': 'text', 'text': ...} parts",
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
            "messages[1].content: must be a string or a list of {'type': 'text', 'text': ...} parts",
        ),
    ],
)
def test_bad_chat_messages_are_refused(client, message, error):
    messages = [{"role": "system", "content": "Be brief."}, message]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert e.value.body["message"] == error and e.value.body["param"] == "messages"


def test_text_parts_are_joined(client):
    parts = [{"type": "text", "text": "The capital "}, {"type": "text", "text": "of France?"}]
    kw = dict(model=MODEL, max_tokens=4, temperature=0.0, extra_body=NO_EOS)
    joined = client.chat.completions.create(messages=[{"role": "user", "content": parts}], **kw)
    plain = client.chat.completions.create(messages=[{"role": "user", "content": "The capital of France?"}], **kw)
    assert joined.choices[0].message.content == plain.choices[0].message.content
    assert joined.usage.prompt_tokens == plain.usage.prompt_tokens


def test_max_tokens_beyond_the_context_is_refused(server, client):
    ids = server[1].tokenizer.encode("Once upon a time")
    room = MAX_MODEL_LEN - len(ids)
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=room, extra_body=NO_EOS)
    assert out.usage.completion_tokens == room and out.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=ids, max_tokens=room + 1)
    assert e.value.body["param"] == "max_tokens"
    assert e.value.body["message"].startswith(
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
        f"{MAX_MODEL_LEN + 1} tokens ({len(ids)} in the prompt, {room + 1} in the completion)."
    )
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128 tokens"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=MAX_MODEL_LEN
        )
    # left out, max_tokens is what the context leaves (chat has no default of 16)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], extra_body=NO_EOS)
    assert chat.usage.total_tokens == MAX_MODEL_LEN and chat.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "endpoint, field, value",
    [
        ("completions", "logit_bias", {"5": 10}),
        ("completions", "echo", True),
        ("completions", "suffix", " the end"),
        ("completions", "best_of", 3),
        ("completions", "guided_json", {"type": "object"}),
        ("completions", "guided_regex", "a+"),
        ("chat", "logit_bias", {"5": -100}),
        ("chat", "functions", [{"name": "f", "parameters": {}}]),
        ("chat", "modalities", ["text", "audio"]),
        ("chat", "reasoning_effort", "high"),
        ("chat", "continue_final_message", True),
    ],
)
def test_unsupported_fields_are_refused(client, endpoint, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        if endpoint == "completions":
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={field: value})
        else:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, extra_body={field: value}
            )
    assert e.value.body["message"] == f"{field} is not supported by this server"
    assert e.value.body["param"] == field


def test_fields_that_ask_for_nothing_are_accepted(server, client):
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        logit_bias={},
        response_format={"type": "text"},
        tool_choice="none",
        metadata={"team": "a"},
        store=False,
        extra_body={"ignore_eos": True, "skip_special_tokens": True, "something_new": 1},
    )
    assert out.usage.completion_tokens == 3
    assert scrape(server[0])["kv_cache_used_blocks"] == 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("stream", "yes"),
        ("max_tokens", True),
        ("ignore_eos", 1),
        ("n", "2"),
        ("temperature", "0.5"),
        ("logprobs", True),
        ("stop", None),
    ],
)
def test_wrong_json_types_are_refused_not_coerced(server, field, value):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, field: value}
    if value is None:  # null is the default of stop: accepted
        assert httpx.post(server[0] + "/v1/completions", json=body).status_code == 200
        return
    error = openai_error(httpx.post(server[0] + "/v1/completions", json=body), 400, "BadRequestError")
    assert error["param"] == field and error["message"].startswith(f"{field}: Input should be a valid ")


def test_a_temperature_too_small_to_divide_by_is_greedy(client):
    """temperature 1e-39 once divided the logits into inf and NaN, and sampled token 0 forever."""
    greedy = client.completions.create(model=MODEL, prompt="Hi", max_tokens=6, temperature=0, extra_body=NO_EOS)
    tiny = client.completions.create(model=MODEL, prompt="Hi", max_tokens=6, temperature=1e-39, extra_body=NO_EOS)
    assert tiny.choices[0].text == greedy.choices[0].text


def test_an_integer_is_a_valid_float(client):
    out = client.completions.create(
        model=MODEL, prompt="Hi", max_tokens=2, temperature=0, top_p=1, extra_body={"repetition_penalty": 1, **NO_EOS}
    )
    assert out.usage.completion_tokens == 2


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", '{"prompt": "caf\\ud800", "max_tokens": 1}', "prompt"),
        ("/v1/completions", '{"prompt": ["ok", "\\udfff"], "max_tokens": 1}', "prompt"),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "x\\uD83D"}], "max_tokens": 1}',
            "messages",
        ),
        ("/v1/completions", '{"prompt": "Hi", "stop": ["\\ud800"], "max_tokens": 1}', "stop"),
    ],
)
def test_a_lone_surrogate_is_a_bad_request(server, path, body, param):
    error = openai_error(post_raw(server[0], body.encode(), path), 400, "BadRequestError")
    assert error["param"] == param and "lone UTF-16 surrogate" in error["message"]


def test_a_surrogate_pair_is_a_character(server):
    response = post_raw(server[0], b'{"prompt": "smile \\ud83d\\ude00", "max_tokens": 1, "ignore_eos": true}')
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 1


def test_logprobs_zero_gives_the_sampled_tokens_logprob(client):
    """As OpenAI and vLLM: ``logprobs: 0`` is the sampled token's logprob with no alternatives."""
    out = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, logprobs=0, extra_body=NO_EOS)
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens) == 3 and logprobs.top_logprobs == [{}, {}, {}]
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    chunks = list(
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, logprobs=0, stream=True, extra_body=NO_EOS)
    )
    assert sum(len(c.choices[0].logprobs.token_logprobs) for c in chunks if c.choices) == 3
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=0,
        extra_body=NO_EOS,
    )
    assert [e.top_logprobs for e in chat.choices[0].logprobs.content] == [[], [], []]


@pytest.mark.parametrize(
    "endpoint, extra, param",
    [
        ("completions", {"prompt": [[1, 2], [600]]}, "prompt"),  # a token id outside the vocabulary of 512
        ("completions", {"prompt": [1] * MAX_MODEL_LEN}, "prompt"),  # too long
        ("completions", {"prompt": "Hi", "stop_token_ids": [10**12]}, "stop_token_ids"),
        ("completions", {"prompt": "Hi", "min_tokens": 5}, "min_tokens"),  # more than max_tokens
        ("chat", {"messages": [{"role": "user", "content": "word " * 200}]}, "messages"),  # too long
    ],
)
def test_engine_side_errors_name_the_param(server, endpoint, extra, param):
    path = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
    error = openai_error(httpx.post(server[0] + path, json={"max_tokens": 2, **extra}), 400, "BadRequestError")
    assert error["param"] == param, error
