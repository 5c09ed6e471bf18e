"""Built-in attention backends."""

from minivllm.core.hookspecs import hookimpl


@hookimpl
def register_attention_backends(register):
    register("cpu", "minivllm.plugins.attention.cpu_attn:CpuAttentionBackend")
    register("torch", "minivllm.plugins.attention.torch_sdpa:TorchAttentionBackend")
    register("triton", "minivllm.plugins.attention.triton_attn:TritonAttentionBackend")
    register("flash_attn", "minivllm.plugins.attention.flash_attn:FlashAttnBackend")
