"""Built-in KV allocators."""

from minivllm.core.hookspecs import hookimpl


@hookimpl
def register_kv_allocators(register):
    register("prefix_cache", "minivllm.plugins.kv_allocators.prefix_cache:PrefixCacheAllocator")
    register("simple", "minivllm.plugins.kv_allocators.simple:SimpleAllocator")
