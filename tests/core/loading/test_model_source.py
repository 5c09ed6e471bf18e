"""Hub ids resolve through huggingface_hub's cache, offline, laid out as the hub lays it out; a missing
model's error says what was tried."""

import os
import shutil

import pytest
from pydantic import ValidationError

from minivllm import LLM, EngineConfig, SamplingParams
from minivllm.core.loading.model_source import looks_like_hub_id, resolve_model

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, llama_path):
    """An offline hub cache holding ``Org/tiny-llama`` at main (= SHA), as snapshot_download leaves it."""
    repo = tmp_path / "hub" / "models--Org--tiny-llama"
    shutil.copytree(llama_path, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder named Org/tiny-llama
    return repo


def test_a_local_path_wins(llama_path):
    assert resolve_model(llama_path) == llama_path


def test_hub_id_resolves_from_the_cache(hub_cache):
    snapshot = str(hub_cache / "snapshots" / SHA)
    assert os.path.samefile(resolve_model("Org/tiny-llama"), snapshot)
    assert os.path.samefile(resolve_model("Org/tiny-llama", revision=SHA), snapshot)


def test_llm_from_a_hub_id_generates_as_from_the_path(hub_cache, llama_path):
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    kw = dict(max_model_len=64, kvcache_block_size=16, num_kvcache_blocks=16)
    with LLM("Org/tiny-llama", **kw) as by_id, LLM(llama_path, **kw) as by_path:
        assert by_id.config.model == "Org/tiny-llama"  # the config keeps what the user gave
        ours = by_id.generate(["Once upon a time"], params, use_tqdm=False)[0]["tokens"]
        assert ours == by_path.generate(["Once upon a time"], params, use_tqdm=False)[0]["tokens"]


def test_missing_revision_says_the_cache_was_searched_offline(hub_cache):
    with pytest.raises(ValueError) as e:
        LLM("Org/tiny-llama", revision="v2")
    message = str(e.value)
    assert "no local path" in message and str(hub_cache.parent) in message
    assert "'v2'" in message and "HF_HUB_OFFLINE" in message


def test_missing_repo_says_what_was_tried(hub_cache):
    with pytest.raises(ValueError, match=r"model 'Org/absent' not found: no local path .*Org/absent.*hub cache"):
        resolve_model("Org/absent")


def test_a_path_that_is_no_hub_id_fails_in_the_config():
    assert not looks_like_hub_id("/nonexistent/model") and not looks_like_hub_id("../x/y")
    assert looks_like_hub_id("Qwen/Qwen3-0.6B") and looks_like_hub_id("gpt2")
    with pytest.raises(ValidationError, match="does not exist, and it is not a Hugging Face hub id"):
        EngineConfig(model="/nonexistent/model")


def test_generate_command_takes_a_hub_id_and_revision(hub_cache, llama_path, capsys):
    from minivllm.cli import main

    args = ["generate", "Once upon a time", "--max-tokens", "3", "--no-chat", "--max-model-len", "64"]
    main([*args, "--model", llama_path])
    by_path = capsys.readouterr().out
    main([*args, "--model", "Org/tiny-llama", "--revision", SHA])
    assert capsys.readouterr().out == by_path
    with pytest.raises(SystemExit, match="Org/tiny-llama' not found"):
        main(["generate", "Once", "--model", "Org/tiny-llama", "--revision", "v2"])
