"""Plugin discovery through a real entry point, the allow-list, registry errors and the CLI listing."""

import os
import subprocess
import sys
import types

import pytest
from pluggy import PluginValidationError

import minivllm
from minivllm import LLM, EngineConfig, SamplingParams
from minivllm.core import plugins
from minivllm.core.interfaces import Sampler, Scheduler
from minivllm.core.registry import Registry


def test_builtins_register_through_the_hooks():
    plugins.load_plugins(reload=True)
    assert plugins.models.names() == ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]
    assert "torch" in plugins.attention_backends
    assert plugins.schedulers.source("fcfs") == "minivllm.plugins.schedulers"


def test_entry_point_plugin_is_discovered_and_selected(plugin_site, allow, llama_path):
    allow("test_plugin")
    assert plugins.samplers.source("constant") == "test_plugin"
    info = {i.name: i for i in plugins.plugin_infos()}["test_plugin"]
    assert info.distribution == "minivllm-test-plugin 0.1.0"
    assert info.hooks == ["register_samplers"]
    llm = LLM(llama_path, sampler="constant", kvcache_block_size=16, max_model_len=256)
    out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert out[0]["tokens"] == [7, 7, 7, 7]


def test_allow_list_excludes_plugins(plugin_site, allow, llama_path):
    allow("")
    assert "constant" not in plugins.samplers
    with pytest.raises(ValueError, match="unknown sampler 'constant'; registered: default, fast"):
        EngineConfig(model=llama_path, sampler="constant")


def test_cli_lists_plugins_with_their_distribution(plugin_site):
    env = dict(os.environ, MINIVLLM_PLUGINS="test_plugin", PYTHONPATH=plugin_site)
    out = subprocess.run(
        [sys.executable, "-m", "minivllm.cli", "plugins"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "test_plugin  [minivllm-test-plugin 0.1.0]  hooks: register_samplers" in out
    assert "sampler: constant  (from test_plugin)" in out
    assert "model architecture: LlamaForCausalLM  (from minivllm.plugins.models)" in out


def test_registry_rejects_duplicates_and_lists_known_names():
    reg = Registry("widget", object)
    reg.register("a", "pkg.mod:A", source="one")
    with pytest.raises(ValueError, match="'a' is registered twice: by 'one' and by 'two'"):
        reg.register("a", "pkg.mod:B", source="two")
    with pytest.raises(ValueError, match="must look like 'module:attr'"):
        reg.register("b", "pkg.mod.B")
    with pytest.raises(ValueError, match="unknown widget 'c'; registered: a"):
        reg.get("c")


def test_misspelled_hook_fails_loudly(monkeypatch):
    plugin = types.ModuleType("misspelled_plugin")

    @minivllm.hookimpl
    def register_sampler(register):  # the hook is register_samplers
        register("never", "pkg:Never")

    plugin.register_sampler = register_sampler
    monkeypatch.setitem(sys.modules, "misspelled_plugin", plugin)
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", (*plugins.DEFAULT_PLUGINS, "misspelled_plugin"))
    try:
        with pytest.raises(
            PluginValidationError,
            match="unknown hook 'register_sampler' in plugin .*"
            "\\(plugin 'misspelled_plugin'\\); the minivllm hooks are "
            "register_models, register_attention_backends, ",
        ):
            plugins.load_plugins(reload=True)
    finally:
        monkeypatch.undo()
        plugins.load_plugins(reload=True)


class NotASampler:
    def sample(self, logits, batch):
        return logits.argmax(dim=-1)


class HalfAScheduler(Scheduler):
    """Forgets schedule()."""


def test_a_registered_class_must_implement_its_interface(monkeypatch):
    reg = Registry("sampler", Sampler)
    reg.register("duck", NotASampler, source="ducks")
    reg.register("lazy_duck", "tests.core.test_plugins:NotASampler", source="ducks")
    for name in ("duck", "lazy_duck"):
        with pytest.raises(
            TypeError,
            match=f"sampler '{name}' \\(registered by plugin 'ducks'\\) is <class "
            "'tests.core.test_plugins.NotASampler'>, which does not subclass "
            "minivllm.core.interfaces.sampler.Sampler",
        ):
            reg.get(name)
    schedulers = Registry("scheduler", Scheduler)
    schedulers.register("half", HalfAScheduler, source="halves")
    with pytest.raises(
        TypeError,
        match="scheduler 'half' \\(registered by plugin 'halves'\\): HalfAScheduler "
        "does not implement schedule of minivllm.core.interfaces.scheduler.Scheduler",
    ):
        schedulers.get("half")
