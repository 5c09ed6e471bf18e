"""With an API key set, every route but /health needs it (/metrics too, unless ``public_metrics``); the
``Bearer`` scheme is accepted in any case."""

import httpx
import openai
import pytest

from tests.entrypoints import MODEL, serving

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def base_url(tiny_engine):
    with serving(tiny_engine, api_key=KEY) as url:
        yield url


ROUTES = [
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/redoc"),
    ("GET", "/no/such/route"),
    ("DELETE", "/v1/models"),
]


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {KEY}", KEY, f"Bearer {KEY}x", "Bearer"])
def test_every_route_but_health_needs_the_key(base_url, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, base_url + path, headers=headers, json={"prompt": "Hi"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "error": {"message": "invalid or missing API key", "type": "AuthenticationError", "param": None, "code": 401}
    }


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_case_insensitive(base_url, scheme):
    headers = {"Authorization": f"{scheme} {KEY}"}
    assert httpx.get(base_url + "/v1/models", headers=headers).json()["data"][0]["id"] == MODEL
    assert httpx.get(base_url + "/metrics", headers=headers).status_code == 200
    assert httpx.get(base_url + "/no/such/route", headers=headers).status_code == 404  # past the key check


def test_health_is_open(base_url):
    assert httpx.get(base_url + "/health").status_code == 200


def test_openai_client(base_url):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)
    out = client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 2


def test_public_metrics_opens_metrics_only(tiny_engine):
    with serving(tiny_engine, api_key=KEY, public_metrics=True) as url:
        response = httpx.get(url + "/metrics")
        assert response.status_code == 200 and "minivllm:kv_cache_usage_perc" in response.text
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/openapi.json").status_code == 401


def test_no_key_no_check(tiny_engine):
    with serving(tiny_engine) as url:
        assert httpx.get(url + "/v1/models").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 200


def test_the_key_never_shows_in_settings():
    from minivllm.entrypoints.settings import ServerSettings

    settings = ServerSettings(api_key=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_an_empty_api_key_refuses_to_start(monkeypatch):
    """``--api-key ""`` or an empty ``$MINIVLLM_API_KEY`` would serve every route without auth, unnoticed."""
    import argparse

    from pydantic import ValidationError

    from minivllm.cli.serve import api_key
    from minivllm.entrypoints.settings import ServerSettings

    def args(key=None):
        return argparse.Namespace(api_key=key, api_key_file=None)

    monkeypatch.delenv("MINIVLLM_API_KEY", raising=False)
    assert api_key(args()) is None and api_key(args(KEY)) == KEY
    with pytest.raises(SystemExit, match="--api-key is empty"):
        api_key(args(""))
    monkeypatch.setenv("MINIVLLM_API_KEY", " ")
    with pytest.raises(SystemExit, match=r"\$MINIVLLM_API_KEY is set but empty"):
        api_key(args())
    monkeypatch.setenv("MINIVLLM_API_KEY", KEY)
    assert api_key(args()) == KEY
    with pytest.raises(ValidationError, match="the API key is empty"):
        ServerSettings(api_key="")
