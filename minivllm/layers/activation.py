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
        return F.silu(gate) * up
