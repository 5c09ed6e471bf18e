"""The CPU path's machine checks: bfloat16 where the CPU computes it natively, for the checkpoints that gain
from it, and float32 whenever asked."""

import pytest
import torch

from minivllm import EngineConfig
from minivllm.core import cpu, runner_setup
from minivllm.core.loading.checkpoint import Checkpoint


def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    real_open = open
    for flags, expected in (("fpu avx2 avx512f avx512_bf16 fma", True), ("fpu amx_tile amx_bf16", True),
                            ("fpu avx2 avx512f avx512_vnni", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path,
                                                                             *a, **k))
        cpu.cpu_has_bf16.cache_clear()
        assert cpu.cpu_has_bf16() is expected
    cpu.cpu_has_bf16.cache_clear()


class FakeConfig:
    def __init__(self, dtype):
        self.dtype = dtype


@pytest.mark.parametrize(("has_bf16", "load_format", "checkpoint_dtype", "setting", "expected"), [
    (True, "gguf", None, "auto", torch.bfloat16),
    (True, "safetensors", "bfloat16", "auto", torch.bfloat16),
    (True, "safetensors", "float16", "auto", torch.float32),
    (True, "safetensors", "float32", "auto", torch.float32),
    (True, "gguf", None, "float32", torch.float32),  # the setting that turns bf16 off
    (False, "gguf", None, "auto", torch.float32),
    (False, "safetensors", "bfloat16", "auto", torch.float32),
])
def test_auto_dtype_on_the_cpu(llama_path, monkeypatch, has_bf16, load_format, checkpoint_dtype, setting, expected):
    monkeypatch.setattr(runner_setup, "cpu_has_bf16", lambda: has_bf16)
    checkpoint = Checkpoint(llama_path, None, load_format, FakeConfig(checkpoint_dtype))
    config = EngineConfig(model=llama_path, dtype=setting)
    assert runner_setup.resolve_dtype(config, checkpoint, torch.device("cpu")) == expected
    assert runner_setup.resolve_dtype(config.model_copy(update={"dtype": "auto"}), checkpoint,
                                torch.device("cuda")) == (getattr(torch, checkpoint_dtype) if checkpoint_dtype
                                                          else torch.float32)
