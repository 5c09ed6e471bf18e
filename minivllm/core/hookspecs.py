"""The pluggy hook specifications: one hook per plugin kind.

Each hook receives a ``register(name, cls)`` callback. ``cls`` is a class implementing the matching
interface from :mod:`minivllm.core.interfaces`, or a ``"module:attr"`` string that is imported only
when the component is first used (so registering never imports optional dependencies).
"""

import pluggy

hookspec = pluggy.HookspecMarker("minivllm")
hookimpl = pluggy.HookimplMarker("minivllm")


@hookspec
def register_models(register):
    """Register :class:`~minivllm.core.interfaces.Model` classes under a Hugging Face architecture name
    (the ``architectures`` entry of a checkpoint's ``config.json``, e.g. ``"LlamaForCausalLM"``)."""


@hookspec
def register_attention_backends(register):
    """Register :class:`~minivllm.core.interfaces.AttentionBackend` classes by backend name."""


@hookspec
def register_schedulers(register):
    """Register :class:`~minivllm.core.interfaces.Scheduler` policies by name."""


@hookspec
def register_kv_allocators(register):
    """Register :class:`~minivllm.core.interfaces.KVAllocator` block managers by name."""


@hookspec
def register_samplers(register):
    """Register :class:`~minivllm.core.interfaces.Sampler` classes by name."""
