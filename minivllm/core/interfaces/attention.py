"""Attention backends, which write new K/V into the paged cache and attend over each sequence's context, and
the `Attention` layer through which a model calls them.

``minivllm check-plugin attention_backend NAME`` checks a backend against plain attention on the batches
the runner builds (:mod:`minivllm.testing.attention`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class AttentionMetadata:
    """Describes one step's batch to the attention backend; built by the model runner each step.

    A batch mixes sequences freely: a whole prompt, a chunk of one over an already computed (or
    prefix-cached) context, or one decode token. Sequence ``i`` contributes the new tokens
    ``query_start_loc[i]:query_start_loc[i+1]``; they are the last tokens of its context of
    ``seq_lens[i]`` tokens, whose K/V lives in the blocks ``block_tables[i]``.
    """

    query_start_loc: torch.Tensor  # [B + 1] int32, cumulative new-token counts
    seq_lens: torch.Tensor  # [B] int32, context length including the new tokens
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot of each new token; -1 = padding, skip
    max_query_len: int
    max_seq_len: int
    # host copies, so that backends that loop in Python need no device sync
    query_start_loc_host: list[int]
    seq_lens_host: list[int]
    # whatever the backend's prepare() derives once per step (e.g. split sizes for flash-decoding)
    backend_state: Any = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend(ABC):
    """One instance per model runner, shared by every attention layer of the model.

    The runner calls :meth:`prepare` once per step, then each attention layer calls :meth:`forward`.
    """

    #: ``kvcache_block_size`` must be a multiple of this (checked when the config is validated).
    block_size_multiple: ClassVar[int] = 16
    #: Whether decode steps may be captured into CUDA graphs (needs fixed-shape, sync-free kernels).
    supports_cuda_graphs: ClassVar[bool] = False

    @classmethod
    def supports_block_size(cls, block_size: int) -> bool:
        return block_size % cls.block_size_multiple == 0

    @classmethod
    def check_block_size(cls, block_size: int) -> None:
        if not cls.supports_block_size(block_size):
            raise ValueError(
                f"kvcache_block_size={block_size} is not supported by the {cls.__name__} attention backend: "
                f"it needs a multiple of {cls.block_size_multiple}"
            )

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        """Whether this backend can run on ``device`` here (imports succeed, hardware fits)."""
        return True

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.dtype = dtype

    def prepare(self, meta: AttentionMetadata) -> None:
        """Called by the runner once per step, before the forward pass; may set ``meta.backend_state``."""

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """Called by each attention layer: store k/v at ``meta.slot_mapping``, then attend causally."""


class Attention(nn.Module):
    """One decoder layer's attention over the paged KV cache, the layer through which a model reaches the
    backend. Models build one per decoder layer with this rank's heads; the runner finds them in module
    order, sizes the KV cache from their ``num_kv_heads`` and ``head_dim``, and binds each its slice."""

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

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q [T, Hq * D], k/v [T, Hkv * D] -> [T, Hq * D]."""
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        out = self.backend.forward(q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        return out.reshape(-1, self.num_heads * self.head_dim)
