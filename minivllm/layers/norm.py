"""RMSNorm, optionally fused with the residual add (as Hugging Face computes it, in float32); the
computation is :func:`minivllm.layers.ops.rms_norm` (one Triton kernel on CUDA)."""

from __future__ import annotations

import torch
from torch import nn

from minivllm.layers import ops


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

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Without ``residual``: norm(x). With it: (norm(x + residual), x + residual), the sum in x's dtype."""
        return ops.rms_norm(x, self.weight, self.eps, residual, self.unit_offset)
