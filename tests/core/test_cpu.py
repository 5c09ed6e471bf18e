"""The CPU path's machine checks: bfloat16 where the CPU computes it natively, for the checkpoints that gain
from it, and float32 whenever asked."""

import subprocess
import sys
import time

import pytest
import torch

from minivllm import LLM, EngineConfig
from minivllm.core import cpu, runner_setup
from minivllm.core.loading.checkpoint import Checkpoint


def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    real_open = open
    for flags, expected in (
        ("fpu avx2 avx512f avx512_bf16 fma", True),
        ("fpu amx_tile amx_bf16", True),
        ("fpu avx2 avx512f avx512_vnni", False),
    ):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(
            "builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k)
        )
        cpu.cpu_has_bf16.cache_clear()
        assert cpu.cpu_has_bf16() is expected
    cpu.cpu_has_bf16.cache_clear()


class FakeConfig:
    def __init__(self, dtype):
        self.dtype = dtype


@pytest.mark.parametrize(
    ("has_bf16", "load_format", "checkpoint_dtype", "setting", "expected"),
    [
        (True, "gguf", None, "auto", torch.bfloat16),
        (True, "safetensors", "bfloat16", "auto", torch.bfloat16),
        (True, "safetensors", "float16", "auto", torch.float32),
        (True, "safetensors", "float32", "auto", torch.float32),
        (True, "gguf", None, "float32", torch.float32),  # the setting that turns bf16 off
        (False, "gguf", None, "auto", torch.float32),
        (False, "safetensors", "bfloat16", "auto", torch.float32),
    ],
)
def test_auto_dtype_on_the_cpu(llama_path, monkeypatch, has_bf16, load_format, checkpoint_dtype, setting, expected):
    monkeypatch.setattr(runner_setup, "cpu_has_bf16", lambda: has_bf16)
    checkpoint = Checkpoint(llama_path, None, load_format, FakeConfig(checkpoint_dtype))
    config = EngineConfig(model=llama_path, dtype=setting)
    assert runner_setup.resolve_dtype(config, checkpoint, torch.device("cpu")) == expected
    assert runner_setup.resolve_dtype(
        config.model_copy(update={"dtype": "auto"}), checkpoint, torch.device("cuda")
    ) == (getattr(torch, checkpoint_dtype) if checkpoint_dtype else torch.float32)


@pytest.fixture
def default_threads(monkeypatch):
    """torch at its default (one thread per usable core), no OMP_NUM_THREADS; the count restored after."""
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("idle", "threads"), [(4.0, 4), (3.1, 3), (2.8, 3), (1.0, 1), (0.6, 1), (0.0, 1)])
def test_threads_are_the_idle_cores(default_threads, monkeypatch, idle, threads):
    monkeypatch.setattr(cpu, "idle_cores", lambda cpus: idle)
    assert cpu.choose_threads() == threads


def test_the_users_thread_count_is_kept(default_threads, monkeypatch):
    monkeypatch.setattr(cpu, "idle_cores", lambda cpus: 1.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu.choose_threads() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(3)  # torch.set_num_threads before building the engine
    assert cpu.choose_threads() is None


def test_a_busy_core_is_not_idle():
    """A process spinning on CPU 0 leaves it (nearly) no idle share, whatever else runs."""
    spin = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"])
    try:
        time.sleep(0.3)
        assert cpu.idle_cores({0}, interval=0.5) < 0.25
    finally:
        spin.kill()
        spin.wait()


def test_the_engine_runs_one_thread_per_idle_core(default_threads, llama_path, monkeypatch):
    monkeypatch.setattr(cpu, "idle_cores", lambda cpus: 1.0)  # three of the four cores busy
    with LLM(llama_path, device="cpu", num_kvcache_blocks=4, max_model_len=64):
        assert torch.get_num_threads() == 1
