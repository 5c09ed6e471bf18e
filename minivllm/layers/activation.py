"""Gated activations over packed gate/up halves; the computation is in :mod:`minivllm.layers.ops`."""

from __future__ import annotations

import torch
from torch import nn

from minivllm.layers import ops


class SiluAndMul(nn.Module):
    """[..., 2 * d] (gate and up, packed) -> [..., d]: silu(gate) * up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)


class GeluAndMul(nn.Module):
    """[..., 2 * d] (gate and up, packed) -> [..., d]: gelu(gate) * up. Gemma uses the tanh approximation
    (transformers' ``gelu_pytorch_tanh``); ``approximate="none"`` is the exact erf GELU."""

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.gelu_and_mul(x, self.approximate)
