from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minivllm.layers import triton_ops


class SiluAndMul(nn.Module):
    """[..., 2 * d] (gate and up, packed) -> [..., d]: silu(gate) * up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if triton_ops.enabled(x):
            return triton_ops.silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)


class GeluAndMul(nn.Module):
    """[..., 2 * d] (gate and up, packed) -> [..., d]: gelu(gate) * up. Gemma uses the tanh approximation
    (transformers' ``gelu_pytorch_tanh``); ``approximate="none"`` is the exact erf GELU."""

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate=self.approximate) * up
