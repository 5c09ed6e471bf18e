"""Pure-PyTorch attention over the paged cache: the reference every fast backend is tested against.

Runs on CPU and GPU. Loops over the batch in Python (host-side lengths, no device sync), gathering each
sequence's context from its blocks and calling ``scaled_dot_product_attention`` with a causal mask
offset by the cached context, so prefill, prefill over a cached prefix, chunks and decode all work.
With an fp8 cache it stores :func:`quantize_fp8`'s values and scales and reads them back multiplied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata, KVScales, quantize_fp8
from minivllm.core.utils import cdiv


def write_kv_cache(k, v, k_cache, v_cache, slots, kv_scales: KVScales | None = None) -> None:
    """Scatter the new tokens' k/v [T, Hkv, D] into the cache at ``slots`` [T] (none of them -1: see
    :func:`written`)."""
    for new, cache, scales in ((k, k_cache, kv_scales and kv_scales.k), (v, v_cache, kv_scales and kv_scales.v)):
        if scales is not None:
            new, scale = quantize_fp8(new)
            scales.view(-1, scales.shape[-1]).index_copy_(0, slots, scale)
            new, cache = new.view(torch.uint8), cache.view(torch.uint8)  # index_copy_ has no fp8 kernel on the CPU
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, new)


def written(k, v, slot_mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k, v and slots of the tokens whose slot is not -1 (padding rows write nothing)."""
    keep = slot_mapping >= 0
    return k[keep], v[keep], slot_mapping[keep]


def gather_slots(cache, scales, slots: torch.Tensor, dtype) -> torch.Tensor:
    """The cached K or V rows at ``slots`` (any shape [...], int64 indices of block * block_size + row):
    [..., Hkv, D] in ``dtype``, dequantised with an fp8 cache. (``index_select`` of whole rows: several
    times faster on the CPU than advanced indexing.)"""
    flat = cache.view(-1, cache.shape[2] * cache.shape[3])  # [num_blocks * block_size, Hkv * D]
    if scales is not None:
        flat = flat.view(torch.uint8)  # fp8 has no indexing kernel on the CPU
    rows = flat.index_select(0, slots.flatten()).view(*slots.shape, *cache.shape[2:])
    if scales is None:
        return rows.to(dtype)
    row_scales = scales.view(-1, scales.shape[-1]).index_select(0, slots.flatten()).view(*slots.shape, -1, 1)
    return rows.view(cache.dtype).to(dtype) * row_scales.to(dtype)


def context_slots(
    block_tables: torch.Tensor, length: int, block_size: int, seq_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, max_blocks] block tables -> [B, length] cache slots of each sequence's first ``length`` tokens.
    With ``seq_lens`` [B], positions past a sequence's end take the slot of its first token: a row it wrote,
    where a never-written row may hold NaN, which a masked-out score would still spread (NaN * 0 = NaN)."""
    pos = torch.arange(length, device=block_tables.device)
    blocks = block_tables.index_select(1, pos // block_size).long()  # [B, length]
    slots = blocks * block_size + pos % block_size
    if seq_lens is not None:
        slots = torch.where(pos < seq_lens[:, None], slots, slots[:, :1])
    return slots


def gather_context(cache, scales, blocks, seq_len: int, dtype) -> torch.Tensor:
    """A sequence's first ``seq_len`` cached K or V rows from its ``blocks``: [Hkv, L, D] in ``dtype``."""
    slots = context_slots(blocks[None], seq_len, cache.shape[1])[0]
    return gather_slots(cache, scales, slots, dtype).transpose(0, 1)


class TorchAttentionBackend(AttentionBackend):
    block_size_multiple = 16
    kv_cache_dtypes = ("auto", "fp8")

    def forward(
        self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float, kv_scales: KVScales | None = None
    ):
        new_k, new_v, slots = written(k, v, meta.slot_mapping)
        write_kv_cache(new_k, new_v, k_cache, v_cache, slots, kv_scales)
        out = torch.empty_like(q)
        starts = meta.query_start_loc_host
        for i, seq_len in enumerate(meta.seq_lens_host):
            start, end = starts[i], starts[i + 1]
            num_blocks = cdiv(seq_len, self.block_size)
            blocks = meta.block_tables[i, :num_blocks]
            keys = gather_context(k_cache, kv_scales and kv_scales.k, blocks, seq_len, q.dtype)  # [Hkv, L, D]
            values = gather_context(v_cache, kv_scales and kv_scales.v, blocks, seq_len, q.dtype)
            queries = q[start:end].transpose(0, 1)  # [Hq, n, D]
            n = end - start
            # query j sits at position seq_len - n + j and sees keys up to it
            mask = torch.ones(n, seq_len, dtype=torch.bool, device=q.device).tril(diagonal=seq_len - n)
            o = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
            out[start:end] = o.transpose(0, 1)
        return out
