"""The fused Triton layer kernels against the reference PyTorch code of minivllm.layers.ops, on random inputs."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from minivllm.layers import RMSNorm, RotaryEmbedding, ops, triton_ops
from tests.gpu.conftest import INTERPRET

pytestmark = pytest.mark.kernels
DTYPES = [torch.float32] if INTERPRET else [torch.float32, torch.bfloat16]


def close(out, ref, dtype):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < (1e-6 if dtype == torch.float32 else 8e-3), err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 1000])
@pytest.mark.parametrize("unit_offset", [False, True])  # Gemma's (1 + weight), centred on 0
def test_rms_norm_with_residual(dtype, hidden, unit_offset, device):
    norm = RMSNorm(hidden, eps=1e-6, unit_offset=unit_offset).to(device)
    norm.weight.data = torch.rand(hidden, device=device) + (-0.5 if unit_offset else 0.5)
    x = torch.randn(37, hidden, dtype=dtype, device=device)
    residual = torch.randn(37, hidden, dtype=dtype, device=device)
    norm = norm.to(dtype)
    ref = ops.torch_rms_norm(x, norm.weight, norm.eps, unit_offset)
    close(triton_ops.rms_norm(x, norm.weight, norm.eps, unit_offset=unit_offset), ref, dtype)
    out, res = triton_ops.rms_norm(x, norm.weight, norm.eps, residual, unit_offset)
    assert torch.equal(res, x + residual)
    close(out, ops.torch_rms_norm(x + residual, norm.weight, norm.eps, unit_offset), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_head_rms_norm_on_strided_view(dtype, device):
    qkv = torch.randn(9, (6 + 2 * 2) * 32, dtype=dtype, device=device)
    q = qkv[:, : 6 * 32].view(9, 6, 32)  # rows strided as in the packed projection's output
    norm = RMSNorm(32).to(device=device, dtype=dtype)
    norm.weight.data.uniform_(0.5, 1.5)
    close(triton_ops.rms_norm(q, norm.weight, norm.eps), ops.torch_rms_norm(q, norm.weight, norm.eps), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype, device):
    x = torch.randn(13, 2 * 3072, dtype=dtype, device=device)
    gate, up = x.chunk(2, dim=-1)
    close(triton_ops.silu_and_mul(x), F.silu(gate) * up, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(6, 64), (16, 128)])
def test_rotary(dtype, heads, head_dim, device):
    config = transformers.Qwen3Config(rope_theta=1_000_000.0)
    with torch.device(device):
        rope = RotaryEmbedding(config, head_dim, max_positions=4096)
    positions = torch.randint(0, 4096, (11,), device=device)
    qkv = torch.randn(11, heads + 2, head_dim, dtype=dtype, device=device)
    x = qkv[:, :heads]
    cos = rope.cos[positions].unsqueeze(1).to(dtype)
    sin = rope.sin[positions].unsqueeze(1).to(dtype)
    ref = x * cos + ops.rotate_half(x) * sin
    close(triton_ops.rotary(x, positions, rope.cos, rope.sin), ref, dtype)


@pytest.mark.skipif(INTERPRET, reason="the interpreter runs on CPU tensors, which never take the kernels")
def test_the_switch_keeps_the_pytorch_code(device, monkeypatch):
    x = torch.randn(4, 64, device=device)
    assert ops.fused(x) and not ops.fused(x.cpu())
    monkeypatch.setenv("MINIVLLM_TRITON_OPS", "0")
    ops._switched_on.cache_clear()
    try:
        assert not ops.fused(x)
    finally:
        monkeypatch.undo()
        ops._switched_on.cache_clear()
