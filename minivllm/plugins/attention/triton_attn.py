"""Triton attention over the paged cache: what ``attention_backend="auto"`` picks on CUDA (the torch backend where
the block size or KV-cache dtype rules it out).

Decode-only steps run the flash-decoding kernel, whose grid depends only on the batch size, so they can
be captured in CUDA graphs; any other step (prompts, chunks over a cached prefix, mixed with decode
tokens) runs the general paged kernel eagerly. The kernels are in :mod:`triton_kernels` (the KV store, the
general kernel) and :mod:`triton_decode` (flash-decoding).
"""

from __future__ import annotations

import importlib.util

import torch

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata, KVScales


class TritonAttentionBackend(AttentionBackend):
    block_size_multiple = 16
    supports_cuda_graphs = True
    kv_cache_dtypes = ("auto", "fp8")

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        return device.type == "cuda" and importlib.util.find_spec("triton") is not None

    def __init__(self, num_heads, num_kv_heads, head_dim, block_size, dtype):
        super().__init__(num_heads, num_kv_heads, head_dim, block_size, dtype)
        from minivllm.plugins.attention import triton_decode, triton_kernels

        self.kernels, self.decode = triton_kernels, triton_decode
        # (without CUDA only Triton's interpreter runs the kernels: any count works)
        self.num_sms = torch.cuda.get_device_properties().multi_processor_count if torch.cuda.is_available() else 8

    def prepare(self, meta: AttentionMetadata) -> None:
        # split count for flash-decoding; a function of the batch size only (graph replays reuse it)
        if meta.is_decode_only:
            meta.backend_state = self.decode.decode_splits(meta.num_seqs, self.num_kv_heads, self.num_sms)

    def forward(
        self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float, kv_scales: KVScales | None = None
    ):
        scales = dict(k_scales=kv_scales.k, v_scales=kv_scales.v) if kv_scales is not None else {}
        self.kernels.store_kv(k, v, k_cache, v_cache, meta.slot_mapping, **scales)
        out = torch.empty_like(q)
        if meta.is_decode_only:
            self.decode.paged_decode(
                q,
                k_cache,
                v_cache,
                out,
                meta.block_tables,
                meta.seq_lens,
                scale,
                num_splits=meta.backend_state,
                **scales,
            )
        else:
            self.kernels.paged_prefill(
                q,
                k_cache,
                v_cache,
                out,
                meta.block_tables,
                meta.seq_lens,
                meta.query_start_loc,
                meta.max_query_len,
                scale,
                **scales,
            )
        return out
