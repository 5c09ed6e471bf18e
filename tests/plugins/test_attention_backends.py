"""Attention backend selection: the fast backends are registered, import lazily, and "auto" falls back."""

import importlib.machinery
import importlib.util

import pytest
import torch

from minivllm.core import plugins
from minivllm.core.config import EngineConfig


def test_fast_backends_are_registered_but_need_cuda():
    plugins.load_plugins()
    assert {"torch", "triton", "flash_attn"} <= set(plugins.attention_backends.names())
    cpu = torch.device("cpu")
    assert not plugins.attention_backends.get("triton").is_available(cpu)
    assert not plugins.attention_backends.get("flash_attn").is_available(cpu)
    cuda = torch.device("cuda")
    has_flash = any(importlib.util.find_spec(name) is not None for name in ("flash_attn_interface", "flash_attn"))
    assert plugins.attention_backends.get("flash_attn").is_available(cuda) == has_flash
    assert plugins.attention_backends.get("flash_attn").block_size_multiple == 256


def test_flash_attn_prefers_flashattention_3(tmp_path, monkeypatch):
    """FlashAttention-3's module (flash_attn_interface) is taken over FlashAttention-2's (flash_attn) when both
    are importable; either alone is taken; neither leaves the backend unavailable. Modules are looked up in
    tmp_path alone, whatever this machine has installed."""
    from minivllm.plugins.attention.flash_attn import installed_library

    def find_in_tmp(name):
        importlib.invalidate_caches()
        return importlib.machinery.PathFinder.find_spec(name, [str(tmp_path)])

    monkeypatch.setattr(importlib.util, "find_spec", find_in_tmp)
    assert installed_library() is None
    assert not plugins.attention_backends.get("flash_attn").is_available(torch.device("cuda"))
    for name in ("flash_attn", "flash_attn_interface"):
        (tmp_path / f"{name}.py").write_text("")
    assert installed_library() == "flash_attn_interface"
    (tmp_path / "flash_attn_interface.py").unlink()
    assert installed_library() == "flash_attn"


def test_auto_on_cuda_skips_flash_attn_and_backends_refusing_the_block_size(llama_path, monkeypatch):
    """flash_attn has not passed the conformance kit on a GPU, so "auto" never picks it; a backend whose
    block-size or KV-cache-dtype check fails is passed over, and when none is left the error says why."""
    for name in ("triton", "flash_attn"):
        monkeypatch.setattr(plugins.attention_backends.get(name), "is_available", classmethod(lambda cls, d: True))
    # built without validation: CUDA is not here to pass the device check
    cuda = dict(model=llama_path, device="cuda")
    assert EngineConfig.model_construct(**cuda, kvcache_block_size=256).resolved_attention_backend == "triton"
    monkeypatch.setattr(plugins.attention_backends.get("triton"), "block_size_multiple", 32)
    assert EngineConfig.model_construct(**cuda, kvcache_block_size=16).resolved_attention_backend == "torch"
    with pytest.raises(
        ValueError,
        match="no attention backend takes kvcache_block_size=24 on cuda: triton needs a "
        "multiple of 32; torch needs a multiple of 16$",
    ):
        _ = EngineConfig.model_construct(**cuda, kvcache_block_size=24).resolved_attention_backend
    monkeypatch.setattr(plugins.attention_backends.get("triton"), "kv_cache_dtypes", ("auto",))
    fp8 = EngineConfig.model_construct(**cuda, kvcache_block_size=64, kv_cache_dtype="fp8")
    assert fp8.resolved_attention_backend == "torch"  # the first that takes an fp8 cache
