"""Attention backends, which write new K/V into the paged cache and attend over each sequence's context, and
the `Attention` layer through which a model calls them.

**fp8 KV cache** (``kv_cache_dtype="fp8"``): the cache holds float8 e4m3 values and, per token and KV
head, a float32 scale, ``max |x| / 448`` over that head's ``head_dim`` values of K (and of V): each
vector uses the whole range of the format, so nothing saturates and small values keep their precision
(no calibration needed, whatever the model's activations are). A backend quantises what it writes and
dequantises what it reads; :func:`quantize_fp8` is the rule, for every backend. Before that, the
attention layer turns q, k and v by one orthogonal matrix (:func:`fp8_rotation`; ``q.k`` is unchanged,
the output is turned back): outlier channels, which dominate ``q.k`` and its rounding error, spread over
every channel, so the same 3-bit mantissas cost about a third as much perplexity (see the README).

``minivllm check-plugin attention_backend NAME`` checks a backend against plain attention on the batches
the runner builds (:mod:`minivllm.testing.attention`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite float8 e4m3fn value


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., head_dim] -> (fp8 values [..., head_dim], float32 scales [...]) with x ~= values * scale."""
    # the largest magnitude is exact in x's dtype, and x / scale computes in float32: no float32 copy of x
    scale = x.abs().amax(dim=-1).float().clamp(min=1e-12) / FP8_MAX
    return (x / scale[..., None]).to(FP8_DTYPE), scale


def fp8_rotation(head_dim: int) -> torch.Tensor | None:
    """The Sylvester-Hadamard matrix H of ±1 entries [head_dim, head_dim]: symmetric, ``H @ H = head_dim * I``,
    exact in any float dtype. None when ``head_dim`` is not a power of two (no rotation then)."""
    if head_dim & (head_dim - 1):
        return None
    h = torch.ones(1, 1)
    while h.shape[0] < head_dim:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)])
    return h


@dataclass
class KVScales:
    """The fp8 cache's scales of one layer, beside its values: [num_blocks, block_size, num_kv_heads]
    float32 each (token ``n``'s scale of head ``h`` sits where its K/V row sits)."""

    k: torch.Tensor
    v: torch.Tensor


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
    #: The ``kv_cache_dtype`` settings it implements ("fp8": it takes ``kv_scales`` in :meth:`forward`).
    kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)

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
    def check_kv_cache_dtype(cls, kv_cache_dtype: str) -> None:
        if kv_cache_dtype not in cls.kv_cache_dtypes:
            raise ValueError(
                f"kv_cache_dtype={kv_cache_dtype!r} is not supported by the {cls.__name__} attention "
                f"backend (it supports: {', '.join(cls.kv_cache_dtypes)})"
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

    def prepare(self, meta: AttentionMetadata) -> None:  # noqa: B027 - optional hook, a no-op by default
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
        kv_scales: KVScales | None = None,  # with kv_cache_dtype="fp8" (the caches are then FP8_DTYPE)
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
        self.kv_scales: KVScales | None = None  # with an fp8 cache
        self.kv_rotation: tuple[torch.Tensor, torch.Tensor] | None = None  # fp8 cache: (H, H / head_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] (or flat: [T, Hq * D], [T, Hkv * D]) -> [T, Hq * D]."""
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
