"""The worked example of a third-party model plugin, examples/minivllm-gemma: pip-installed with its real
entry point, discovered and listed by the CLI, its own tests (the conformance kit: greedy token for token
with transformers' Gemma on one rank and on two) passing; left out by MINIVLLM_PLUGINS, its architecture
is unsupported."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from minivllm import LLM, SamplingParams
from minivllm.core import plugins
from minivllm.testing.checkpoints import TINY, tiny_checkpoint
from tests.checkpoints import hf_greedy
from tests.packages import installed

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "minivllm-gemma")
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
SMALL = dict(kvcache_block_size=16, max_model_len=256, dtype="float32")


@pytest.fixture(scope="module")
def gemma_site(tmp_path_factory) -> str:
    """The example, installed as `pip install` would (its entry point included)."""
    with installed(EXAMPLE, tmp_path_factory.mktemp("gemma_plugin"), "minivllm_gemma") as site:
        yield site


@pytest.fixture
def gemma(gemma_site, allow):
    allow("gemma")


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory) -> str:
    """A tiny random Gemma checkpoint (float32 safetensors, tied embeddings) with a real BPE tokenizer."""
    return tiny_checkpoint("GemmaForCausalLM", str(tmp_path_factory.mktemp("ckpt") / "gemma"))


def test_discovered_through_its_entry_point(gemma, gemma_site):
    assert plugins.models.source("GemmaForCausalLM") == "gemma"
    info = {i.name: i for i in plugins.plugin_infos()}["gemma"]
    assert info.distribution == "minivllm-gemma 0.1.0"
    assert info.hooks == ["register_models"]
    model_module = importlib.import_module(plugins.models.get("GemmaForCausalLM").__module__)
    assert model_module.__file__.startswith(gemma_site)  # the installed copy, not the source tree


def test_its_own_tests_run_the_conformance_kit(gemma_site):
    """The example's tests are the kit's model contracts: greedy parity with transformers' Gemma (prefix
    hits, chunked prefill, preemption) on one rank and on two gloo ranks, whose worker loads the plugin
    from the inherited environment."""
    env = dict(os.environ, MINIVLLM_PLUGINS="gemma", PYTHONPATH=gemma_site)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", EXAMPLE],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_text_prompt_through_the_tokenizer(gemma, gemma_path):
    from transformers import AutoTokenizer

    text = "The capital of France is"
    ids = AutoTokenizer.from_pretrained(gemma_path).encode(text)
    out = LLM(gemma_path, **SMALL).generate(text, GREEDY, use_tqdm=False)[0]
    assert out["tokens"] == hf_greedy(gemma_path, [ids], GREEDY.max_tokens)[0]


def test_bfloat16_rounds_like_transformers(gemma):
    """The embedding scale and the (1 + weight) norm round to bfloat16 where transformers rounds, bit for bit
    (sqrt(3072) is 55.5 in bfloat16, not 55.4256)."""
    from transformers import GemmaConfig, GemmaModel

    from minivllm.core.interfaces import ModelContext

    config = GemmaConfig(**dict(TINY, hidden_size=3072, num_hidden_layers=0))
    torch.manual_seed(0)
    reference = GemmaModel(config).to(torch.bfloat16)
    with torch.no_grad():
        reference.norm.weight.uniform_(-0.5, 0.5)
    torch.set_default_dtype(torch.bfloat16)  # as the runner builds a bfloat16 model
    try:
        model = plugins.models.get("GemmaForCausalLM")(config, ModelContext(attn_backend=None))
    finally:
        torch.set_default_dtype(torch.float32)
    model.load_weights((f"model.{name}", t) for name, t in reference.state_dict().items())
    ids = torch.arange(0, 512, 7)
    x, residual = torch.randn(2, len(ids), 3072, dtype=torch.bfloat16)
    with torch.no_grad():
        embedded = model.embed_tokens(ids) * model.embed_scale
        assert embedded.dtype == torch.bfloat16
        assert torch.equal(embedded, reference.embed_tokens(ids))
        assert torch.equal(model.norm(x), reference.norm(x))
        normed, summed = model.norm(x, residual)
        assert torch.equal(summed, x + residual)
        assert torch.equal(normed, reference.norm(x + residual))


def test_cli_lists_it_with_its_distribution(gemma_site):
    env = dict(os.environ, MINIVLLM_PLUGINS="gemma", PYTHONPATH=gemma_site)
    out = subprocess.run(
        [sys.executable, "-m", "minivllm.cli", "plugins"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "gemma  [minivllm-gemma 0.1.0]  hooks: register_models" in out
    assert "model architecture: GemmaForCausalLM  (from gemma)" in out


def test_excluded_plugin_leaves_the_architecture_unsupported(gemma_site, allow, gemma_path):
    allow("")
    supported = plugins.models.names()
    assert supported and "GemmaForCausalLM" not in supported
    with pytest.raises(
        ValueError, match=f"unsupported architecture 'GemmaForCausalLM'; supported: {', '.join(supported)}$"
    ):
        LLM(gemma_path, **SMALL)


def test_unsupported_activation_is_an_error(gemma, gemma_path, tmp_path):
    path = tmp_path / "relu"
    shutil.copytree(gemma_path, path)
    config = json.loads((path / "config.json").read_text())
    config["hidden_act"] = "relu"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Gemma: unsupported hidden_act 'relu'"):
        LLM(str(path), **SMALL)
