"""The worked example of a third-party model plugin, examples/minivllm-gemma: pip-installed with its real
entry point, discovered and listed by the CLI, greedy token for token with transformers' Gemma on one rank
and on two (gloo); left out by MINIVLLM_PLUGINS, its architecture is unsupported."""

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
from tests.checkpoints import hf_greedy, random_prompts, save_tokenizer
from tests.packages import pip_install_copy

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "minivllm-gemma")
# Gemma's shape, shrunk: head_dim is set apart from hidden_size // heads (256 in the released models)
GEMMA = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, rms_norm_eps=1e-6)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
PREFIX = random_prompts(1, 40, 40, seed=20)[0]  # two full blocks of 16 and a partial one
PROMPTS = [PREFIX] + random_prompts(4, 3, 60, seed=21)
SHARED = [PREFIX + tail for tail in random_prompts(2, 1, 10, seed=22)]  # prefix-cache hits on PROMPTS[0]
SMALL = dict(kvcache_block_size=16, max_model_len=256, dtype="float32")


@pytest.fixture(scope="module")
def gemma_site(tmp_path_factory) -> str:
    """The example, installed as `pip install` would (its entry point included)."""
    site = pip_install_copy(EXAMPLE, tmp_path_factory.mktemp("gemma_plugin"))
    sys.path.insert(0, site)
    yield site
    sys.path.remove(site)
    for name in [m for m in sys.modules if m.split(".")[0] == "minivllm_gemma"]:
        del sys.modules[name]


@pytest.fixture
def gemma(gemma_site, allow):
    allow("gemma")


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory) -> str:
    """A tiny random Gemma checkpoint (float32 safetensors, tied embeddings) with a real BPE tokenizer."""
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(0)
    model = GemmaForCausalLM(GemmaConfig(**GEMMA)).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # norm weights are centred on 0 (the norm scales by 1 + weight); the rest wider than the
            # usual init so that greedy choices are not near-ties
            if "norm" in name:
                p.uniform_(-0.2, 0.2)
            else:
                p.normal_(0.0, 0.3)
    path = str(tmp_path_factory.mktemp("ckpt") / "gemma")
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def expected(gemma_path) -> list[list[int]]:
    return hf_greedy(gemma_path, PROMPTS + SHARED, GREEDY.max_tokens)


def _tokens(llm, prompts, params=GREEDY):
    return [out["tokens"] for out in llm.generate(prompts, params, use_tqdm=False)]


def test_discovered_through_its_entry_point(gemma, gemma_site):
    assert plugins.models.source("GemmaForCausalLM") == "gemma"
    info = {i.name: i for i in plugins.plugin_infos()}["gemma"]
    assert info.distribution == "minivllm-gemma 0.1.0"
    assert info.hooks == ["register_models"]
    model_module = importlib.import_module(plugins.models.get("GemmaForCausalLM").__module__)
    assert model_module.__file__.startswith(gemma_site)  # the installed copy, not the source tree


def test_matches_transformers_with_prefix_hits(gemma, gemma_path, expected, monkeypatch):
    llm = LLM(gemma_path, **SMALL)
    assert _tokens(llm, PROMPTS) == expected[: len(PROMPTS)]
    allocator, hits = llm.engine.allocator, []
    match_prefix = allocator.match_prefix
    monkeypatch.setattr(allocator, "match_prefix", lambda seq: hits.append(match_prefix(seq)) or hits[-1])
    assert _tokens(llm, SHARED) == expected[len(PROMPTS):]
    assert hits == [32, 32]  # the prefix's two full blocks came from the cache


def test_chunked_prefill_and_preemption_match_transformers(gemma, gemma_path, expected):
    # a budget of 24 tokens splits prompts into chunks; 6 blocks of 16 hold about two sequences, so decode
    # preempts and recomputes
    llm = LLM(gemma_path, scheduler="chunked", max_num_batched_tokens=24, num_kvcache_blocks=6, **SMALL)
    assert _tokens(llm, PROMPTS + SHARED) == expected
    assert llm.engine.scheduler.num_preemptions > 0


def test_two_ranks_match_transformers(gemma, gemma_path, expected):
    """Sharded over 2 gloo ranks (heads, KV heads, MLP and vocabulary split), chunked prefill and preemption
    included. The spawned worker loads the plugin itself: it inherits MINIVLLM_PLUGINS and sys.path."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rank 0 and the worker share this machine's cores
    try:
        with LLM(gemma_path, tensor_parallel_size=2, scheduler="chunked", max_num_batched_tokens=24,
                 num_kvcache_blocks=6, **SMALL) as llm:
            assert _tokens(llm, PROMPTS + SHARED) == expected
            assert llm.engine.scheduler.num_preemptions > 0
    finally:
        torch.set_num_threads(threads)


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

    config = GemmaConfig(**dict(GEMMA, hidden_size=3072, num_hidden_layers=0))
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
    out = subprocess.run([sys.executable, "-m", "minivllm.cli", "plugins"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "gemma  [minivllm-gemma 0.1.0]  hooks: register_models" in out
    assert "model architecture: GemmaForCausalLM  (from gemma)" in out


def test_excluded_plugin_leaves_the_architecture_unsupported(gemma_site, allow, gemma_path):
    allow("")
    supported = plugins.models.names()
    assert supported and "GemmaForCausalLM" not in supported
    with pytest.raises(ValueError, match=f"unsupported architecture 'GemmaForCausalLM'; supported: "
                                         f"{', '.join(supported)}$"):
        LLM(gemma_path, **SMALL)


def test_unsupported_activation_is_an_error(gemma, gemma_path, tmp_path):
    path = tmp_path / "relu"
    shutil.copytree(gemma_path, path)
    config = json.loads((path / "config.json").read_text())
    config["hidden_act"] = "relu"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Gemma: unsupported hidden_act 'relu'"):
        LLM(str(path), **SMALL)
