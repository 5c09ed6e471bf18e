"""Built-in samplers."""

from minivllm.core.hookspecs import hookimpl


@hookimpl
def register_samplers(register):
    register("default", "minivllm.plugins.samplers.default:DefaultSampler")
    register("fast", "minivllm.plugins.samplers.fast:FastSampler")
    register("fused", "minivllm.plugins.samplers.fused:FusedSampler")
