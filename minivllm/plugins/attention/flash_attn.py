"""FlashAttention over the paged cache, through whichever generation of the library is installed:

- FlashAttention-3 (``flash_attn_interface``: Hopper GPUs, built from source by ``scripts/build_flash_attn.sh``):
  ``flash_attn_varlen_func`` for prompts with no cached context; ``flash_attn_with_kvcache`` over the block
  tables (its ``page_table``) for the rest, decode steps and prompts or chunks that continue a cached context
  (``cu_seqlens_q`` marks each sequence's queries, ``cache_seqlens`` its keys).
- FlashAttention-2 (``flash_attn``, ``pip install flash-attn``): ``flash_attn_varlen_func`` for prompts and
  chunks (over the block tables when part of the context is cached), ``flash_attn_with_kvcache`` for decode.

FlashAttention-3 is taken when both are there. Chosen only by name (``attention_backend="flash_attn"``):
``auto`` prefers the backends that passed the conformance kit on a GPU, and this one has not run on one yet
(see :attr:`~minivllm.core.config.EngineConfig.resolved_attention_backend`). The library is imported only
when the backend is built, so nothing needs it to be installed. FlashAttention-2's paged kernels need blocks
of a multiple of 256 tokens (FlashAttention-3 takes any size), so the backend asks for that.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
import torch.nn.functional as F

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata

LIBRARIES = ("flash_attn_interface", "flash_attn")  # FlashAttention-3, then FlashAttention-2


def installed_library() -> str | None:
    """The module name of the FlashAttention found first in :data:`LIBRARIES`, or None."""
    return next((name for name in LIBRARIES if importlib.util.find_spec(name) is not None), None)


class FlashAttnBackend(AttentionBackend):
    block_size_multiple = 256
    supports_cuda_graphs = True

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        return device.type == "cuda" and installed_library() is not None

    def __init__(self, num_heads, num_kv_heads, head_dim, block_size, dtype):
        super().__init__(num_heads, num_kv_heads, head_dim, block_size, dtype)
        name = installed_library()
        self.fa3 = name == "flash_attn_interface"
        self.flash_attn = importlib.import_module(name)

    def prepare(self, meta: AttentionMetadata) -> None:
        if meta.is_decode_only:
            return
        # None when no sequence has cached context (plain prefill); else the key lengths the kernel takes:
        # per sequence for FlashAttention-3, cumulative ([B + 1]) for FlashAttention-2
        query_lens = [b - a for a, b in zip(meta.query_start_loc_host, meta.query_start_loc_host[1:])]
        if query_lens == meta.seq_lens_host:
            meta.backend_state = None
        elif self.fa3:
            meta.backend_state = meta.seq_lens
        else:
            meta.backend_state = F.pad(meta.seq_lens.cumsum(0, dtype=torch.int32), (1, 0))

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        from minivllm.plugins.attention.triton_kernels import store_kv

        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only:
            blocks = {"page_table" if self.fa3 else "block_table": meta.block_tables}
            out = self.flash_attn.flash_attn_with_kvcache(
                q.unsqueeze(1),
                k_cache,
                v_cache,
                cache_seqlens=meta.seq_lens,
                softmax_scale=scale,
                causal=True,
                **blocks,
            )
            return out.squeeze(1)
        if meta.backend_state is None:  # every key is new: attend over k/v directly
            return self.flash_attn.flash_attn_varlen_func(
                q,
                k,
                v,
                cu_seqlens_q=meta.query_start_loc,
                cu_seqlens_k=meta.query_start_loc,
                max_seqlen_q=meta.max_query_len,
                max_seqlen_k=meta.max_query_len,
                softmax_scale=scale,
                causal=True,
            )
        if self.fa3:
            return self.flash_attn.flash_attn_with_kvcache(
                q,
                k_cache,
                v_cache,
                cache_seqlens=meta.backend_state,
                page_table=meta.block_tables,
                cu_seqlens_q=meta.query_start_loc,
                max_seqlen_q=meta.max_query_len,
                softmax_scale=scale,
                causal=True,
            )
        return self.flash_attn.flash_attn_varlen_func(
            q,
            k_cache,
            v_cache,
            cu_seqlens_q=meta.query_start_loc,
            cu_seqlens_k=meta.backend_state,
            max_seqlen_q=meta.max_query_len,
            max_seqlen_k=meta.max_seq_len,
            softmax_scale=scale,
            causal=True,
            block_table=meta.block_tables,
        )
