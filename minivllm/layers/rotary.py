"""Rotary position embedding with a precomputed cos/sin table, indexed by position."""

from __future__ import annotations

import torch
from torch import nn

from minivllm.layers import triton_ops


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

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions [T]; q [T, Hq, D]; k [T, Hkv, D] -> rotated (q, k). Without Triton, q and k turn as one
        tensor (half the small ops of turning each: this runs in every layer of every CPU step) and come
        back as views of it."""
        if triton_ops.enabled(q):
            return triton_ops.rotary(q, positions, self.cos, self.sin), triton_ops.rotary(k, positions, self.cos, self.sin)
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)  # [T, 1, D]
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        qk = torch.cat((q, k), dim=1)
        qk = qk * cos + self._rotate_half(qk) * sin
        return qk.split((q.shape[1], k.shape[1]), dim=1)
