"""flash-attn over the paged cache: ``flash_attn_varlen_func`` for prompts and chunks (over the block
tables when part of the context is cached), ``flash_attn_with_kvcache`` for decode steps.

Chosen only by name (``attention_backend="flash_attn"``): ``auto`` prefers the backends that passed the
conformance kit on a GPU, and this one has not run on one yet (see
:attr:`~minivllm.core.config.EngineConfig.resolved_attention_backend`). ``flash_attn`` is imported only when
the backend is built, so nothing needs flash-attn to be installed. Its paged kernels need blocks of a
multiple of 256 tokens.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata


class FlashAttnBackend(AttentionBackend):
    block_size_multiple = 256
    supports_cuda_graphs = True

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None

    def __init__(self, num_heads, num_kv_heads, head_dim, block_size, dtype):
        super().__init__(num_heads, num_kv_heads, head_dim, block_size, dtype)
        import flash_attn

        self.flash_attn = flash_attn

    def prepare(self, meta: AttentionMetadata) -> None:
        if meta.is_decode_only:
            return
        # [B + 1] cumulative context lengths; None when no sequence has cached context (plain prefill)
        query_lens = [b - a for a, b in zip(meta.query_start_loc_host, meta.query_start_loc_host[1:])]
        if query_lens == meta.seq_lens_host:
            meta.backend_state = None
        else:
            meta.backend_state = F.pad(meta.seq_lens.cumsum(0, dtype=torch.int32), (1, 0))

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        from minivllm.plugins.attention.triton_kernels import store_kv

        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only:
            out = self.flash_attn.flash_attn_with_kvcache(
                q.unsqueeze(1), k_cache, v_cache, cache_seqlens=meta.seq_lens, block_table=meta.block_tables,
                softmax_scale=scale, causal=True,
            )
            return out.squeeze(1)
        if meta.backend_state is None:  # every key is new: attend over k/v directly
            return self.flash_attn.flash_attn_varlen_func(
                q, k, v, cu_seqlens_q=meta.query_start_loc, cu_seqlens_k=meta.query_start_loc,
                max_seqlen_q=meta.max_query_len, max_seqlen_k=meta.max_query_len, softmax_scale=scale, causal=True,
            )
        return self.flash_attn.flash_attn_varlen_func(
            q, k_cache, v_cache, cu_seqlens_q=meta.query_start_loc, cu_seqlens_k=meta.backend_state,
            max_seqlen_q=meta.max_query_len, max_seqlen_k=meta.max_seq_len, softmax_scale=scale, causal=True,
            block_table=meta.block_tables,
        )
