"""The layers' elementwise work (norms, gated activations, rotary embedding), with the choice of
implementation made here and nowhere else.

Each op has its plain PyTorch code (``torch_*``): the reference, what runs on the CPU, and what
``tests/gpu/test_triton_ops.py`` compares the kernels with. For CUDA tensors, when Triton imports, the
dispatching function runs the fused kernel of :mod:`minivllm.layers.triton_ops` instead (one launch where
eager PyTorch needs several). The layers (:class:`~minivllm.layers.RMSNorm`, :class:`~minivllm.layers.SiluAndMul`,
:class:`~minivllm.layers.RotaryEmbedding`) call the dispatching functions and never choose themselves.
``MINIVLLM_TRITON_OPS=0`` keeps the PyTorch code on CUDA too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from minivllm.layers import triton_ops


@functools.cache
def _switched_on() -> bool:
    return os.environ.get("MINIVLLM_TRITON_OPS", "1") != "0"


def fused(x: torch.Tensor) -> bool:
    """Whether ``x``'s ops run as Triton kernels: a CUDA tensor, Triton importable, not switched off."""
    return triton_ops.enabled(x) and _switched_on()


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, unit_offset: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [..., N]. Without ``residual``: norm(x). With it: (norm(x + residual), x + residual), the sum in
    x's dtype. ``unit_offset`` scales by ``1 + weight`` (see :class:`~minivllm.layers.RMSNorm`)."""
    if fused(x):
        return triton_ops.rms_norm(x, weight, eps, residual, unit_offset)
    if residual is None:
        return torch_rms_norm(x, weight, eps, unit_offset)
    x = x + residual
    return torch_rms_norm(x, weight, eps, unit_offset), x


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool = False) -> torch.Tensor:
    dtype = x.dtype
    x = F.rms_norm(x.float(), x.shape[-1:], eps=eps)  # x * rsqrt(mean(x^2) + eps), one kernel
    if unit_offset:
        return (x * (1.0 + weight.float())).to(dtype)
    return weight * x.to(dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[..., 2 * d] (gate and up, packed) -> [..., d]: silu(gate) * up."""
    if fused(x):
        return triton_ops.silu_and_mul(x)
    return torch_silu_and_mul(x)


def torch_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


def gelu_and_mul(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """[..., 2 * d] -> [..., d]: gelu(gate) * up (PyTorch only: no kernel of its own)."""
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate=approximate) * up


def rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: Callable[[torch.Tensor, torch.dtype], tuple[torch.Tensor, torch.Tensor]],
):
    """positions [T]; q [T, Hq, D]; k [T, Hkv, D]; cos/sin tables [max_positions, D] -> rotated (q, k).
    ``rows(positions, dtype)`` gives the PyTorch path its cos and sin rows [T, 1, D] (the
    :class:`~minivllm.layers.RotaryEmbedding` keeps a step's lookup for its layers to share)."""
    if fused(q):
        return triton_ops.rotary(q, positions, cos, sin), triton_ops.rotary(k, positions, cos, sin)
    return torch_rotary(q, k, *rows(positions, q.dtype))


def torch_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q and k turn as one tensor (half the small ops of turning each: this runs in every layer of every CPU
    step) and come back as views of it; cos/sin [T, 1, D]."""
    qk = torch.cat((q, k), dim=1)
    qk = qk * cos + rotate_half(qk) * sin
    return qk.split((q.shape[1], k.shape[1]), dim=1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
