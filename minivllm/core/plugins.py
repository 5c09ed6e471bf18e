"""Plugin loading: built-in plugin modules and the ``minivllm`` entry-point group, through pluggy.

Built-ins register through the same hooks as third-party packages. ``MINIVLLM_PLUGINS`` (a comma
separated list of entry-point names) restricts which third-party plugins load; unset loads them all.
Loading is idempotent and runs in every process that builds an engine.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field

import pluggy

from minivllm.core import hookspecs
from minivllm.core.interfaces import AttentionBackend, KVAllocator, Model, Sampler, Scheduler
from minivllm.core.registry import Registry

DEFAULT_PLUGINS = (
    "minivllm.plugins.models",
    "minivllm.plugins.attention",
    "minivllm.plugins.schedulers",
    "minivllm.plugins.kv_allocators",
    "minivllm.plugins.samplers",
)
ENTRY_POINT_GROUP = "minivllm"

models: Registry[Model] = Registry("model architecture", Model)
attention_backends: Registry[AttentionBackend] = Registry("attention backend", AttentionBackend)
schedulers: Registry[Scheduler] = Registry("scheduler", Scheduler)
kv_allocators: Registry[KVAllocator] = Registry("KV allocator", KVAllocator)
samplers: Registry[Sampler] = Registry("sampler", Sampler)

# hook name -> the registry it fills
_REGISTRIES = {
    "register_models": models,
    "register_attention_backends": attention_backends,
    "register_schedulers": schedulers,
    "register_kv_allocators": kv_allocators,
    "register_samplers": samplers,
}


@dataclass
class PluginInfo:
    name: str
    distribution: str | None  # "name version" for entry-point plugins, None for built-ins
    hooks: list[str] = field(default_factory=list)


_manager: pluggy.PluginManager | None = None


def load_plugins(reload: bool = False) -> pluggy.PluginManager:
    """Load built-in and allowed third-party plugins once per process and fill the registries."""
    global _manager
    if _manager is not None and not reload:
        return _manager
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for module in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module), name=module)
    allowed = os.environ.get("MINIVLLM_PLUGINS")
    if allowed is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    else:
        for name in filter(None, (n.strip() for n in allowed.split(","))):
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    _check_hook_names(pm)
    for registry in _REGISTRIES.values():
        registry.clear()
    for hook_name, registry in _REGISTRIES.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            impl.function(register=functools.partial(_register, registry, impl.plugin_name))
    _manager = pm
    return pm


def _check_hook_names(pm: pluggy.PluginManager) -> None:
    """A hook implementation whose name matches no hook (a misspelling) would be ignored: refuse it."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise pluggy.PluginValidationError(
            e.plugin, f"{e} (plugin {pm.get_name(e.plugin)!r}); the minivllm hooks are {', '.join(_REGISTRIES)}"
        ) from None


def _register(registry: Registry, source: str, name: str, target) -> None:
    registry.register(name, target, source=source)


def plugin_infos() -> list[PluginInfo]:
    """What is loaded: each plugin with its distribution and the hooks it implements."""
    pm = load_plugins()
    dists = {pm.get_name(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        infos.append(PluginInfo(name, dists.get(name), hooks))
    return infos


def registries() -> dict[str, Registry]:
    """The registries by hook name, after loading the plugins."""
    load_plugins()
    return dict(_REGISTRIES)
