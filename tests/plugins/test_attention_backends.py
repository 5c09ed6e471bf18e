"""Attention backend selection: the fast backends are registered, import lazily, and "auto" falls back."""

import importlib.util

import torch

from minivllm.core import plugins


def test_fast_backends_are_registered_but_need_cuda():
    plugins.load_plugins()
    assert {"torch", "triton", "flash_attn"} <= set(plugins.attention_backends.names())
    cpu = torch.device("cpu")
    assert not plugins.attention_backends.get("triton").is_available(cpu)
    assert not plugins.attention_backends.get("flash_attn").is_available(cpu)
    cuda = torch.device("cuda")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    assert plugins.attention_backends.get("flash_attn").is_available(cuda) == has_flash
    assert plugins.attention_backends.get("flash_attn").block_size_multiple == 256


def test_auto_picks_torch_on_cpu(llama_path):
    from minivllm.core.config import EngineConfig

    assert EngineConfig(model=llama_path, device="cpu").resolved_attention_backend == "torch"
