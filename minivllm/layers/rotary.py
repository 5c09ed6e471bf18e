"""Rotary position embedding with a precomputed cos/sin table, indexed by position.

A model builds one :class:`RotaryEmbedding` and its layers share it (one table, not one per layer). On the
CPU the layers of a step also share the lookup of the step's rows: the first layer looks them up and the
rest, called with the same ``positions`` tensor, reuse them.
"""

from __future__ import annotations

import torch
from torch import nn

from minivllm.layers import ops


def rope_parameters(config) -> dict:
    """The checkpoint's RoPE settings as one dict with ``rope_theta`` and ``rope_type``."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def inv_frequencies(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim // 2] and the attention scaling, as transformers computes them."""
    params = rope_parameters(config)
    if params["rope_type"] == "default":
        base = params["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if params["rope_type"] not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"unsupported rope_type {params['rope_type']!r}")
    return ROPE_INIT_FUNCTIONS[params["rope_type"]](config, torch.device("cpu"))


class RotaryEmbedding(nn.Module):
    def __init__(self, config, head_dim: int, max_positions: int):
        super().__init__()
        inv_freq, scaling = inv_frequencies(config, head_dim)
        inv_freq = inv_freq.to(torch.empty(0).device)  # transformers' init functions return CPU tensors
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)
        self._step: tuple[torch.Tensor, torch.dtype, torch.Tensor, torch.Tensor] | None = None  # see rows()

    def rows(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The cos and sin rows of ``positions`` [T], [T, 1, D] in ``dtype``. On the CPU the last lookup is
        kept and reused while the same ``positions`` tensor comes back (the layers of one step); not on a
        GPU, where CUDA graphs replay one positions buffer with new contents."""
        if self._step is not None and self._step[0] is positions and self._step[1] == dtype:
            return self._step[2], self._step[3]
        cos = self.cos[positions].unsqueeze(1).to(dtype)
        sin = self.sin[positions].unsqueeze(1).to(dtype)
        if positions.device.type == "cpu":
            self._step = (positions, dtype, cos, sin)
        return cos, sin

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, Hq, D]; k [T, Hkv, D] -> rotated (q, k) (:func:`minivllm.layers.ops.rotary`)."""
        return ops.rotary(positions, q, k, self.cos, self.sin, self.rows)
