"""The attention layer models use: it holds its slice of the paged KV cache and calls the backend."""

from __future__ import annotations

import torch
from torch import nn

from minivllm.core.interfaces.attention import AttentionBackend, AttentionMetadata, KVScales, fp8_rotation


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, backend: AttentionBackend):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.backend = backend
        # bound by the model runner once the cache is allocated: [num_blocks, block_size, num_kv_heads, head_dim]
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self.kv_scales: KVScales | None = None  # with an fp8 cache
        self.kv_rotation: tuple[torch.Tensor, torch.Tensor] | None = None  # fp8 cache: (H, H / head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q [T, Hq * D], k/v [T, Hkv * D] -> [T, Hq * D]."""
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.kv_scales is None:
            out = self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
            return out.reshape(-1, self.num_heads * self.head_dim)
        # fp8 cache: attend in turned coordinates (H H = d I): q H/d . k H = q . k, and the output o H
        # turns back by H/d
        if self.kv_rotation is not None:
            h, h_over_d = self.kv_rotation
            q, k, v = q @ h_over_d, k @ h, v @ h
        out = self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale, self.kv_scales)
        if self.kv_rotation is not None:
            out = out @ h_over_d
        return out.reshape(-1, self.num_heads * self.head_dim)

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_scales: KVScales | None = None) -> None:
        """Called by the model runner when it allocates the cache ([num_blocks, block_size, num_kv_heads,
        head_dim] each; with ``kv_scales`` an fp8 cache, whose K/V this layer turns, see fp8_rotation)."""
        self.k_cache, self.v_cache, self.kv_scales = k_cache, v_cache, kv_scales
        self.kv_rotation = None
        if kv_scales is not None and (h := fp8_rotation(self.head_dim)) is not None:
            h = h.to(dtype=self.backend.dtype, device=k_cache.device)
            self.kv_rotation = (h, h / self.head_dim)
