"""RMSNorm, optionally fused with the residual add (as Hugging Face computes it, in float32); one Triton
kernel on CUDA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minivllm.layers import triton_ops


class RMSNorm(nn.Module):
    """``x / rms(x)`` over the last dimension, computed in float32, then scaled:

    - by default (Llama, Qwen) rounded to x's dtype first, then multiplied by ``weight`` (which starts at 1);
    - with ``unit_offset`` (Gemma) multiplied by ``1 + weight`` in float32, then rounded: Gemma checkpoints
      store the weight centred on 0 (it starts at 0).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        init = torch.zeros if unit_offset else torch.ones
        self.weight = nn.Parameter(init(hidden_size), requires_grad=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # x * rsqrt(mean(x^2) + eps), one kernel
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Without ``residual``: norm(x). With it: (norm(x + residual), x + residual), the sum in x's dtype."""
        if triton_ops.enabled(x):
            return triton_ops.rms_norm(x, self.weight, self.eps, residual, self.unit_offset)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x
