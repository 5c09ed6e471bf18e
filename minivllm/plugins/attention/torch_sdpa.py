"""Pure-PyTorch attention over the paged cache: the reference every fast backend is tested against.

Runs on CPU and GPU. Loops over the batch in Python (host-side lengths, no device sync), gathering each
sequence's context from its blocks and calling ``scaled_dot_product_attention`` with a causal mask
offset by the cached context, so prefill, prefill over a cached prefix, chunks and decode all work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata


def write_kv_cache(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Scatter the new tokens' k/v [T, Hkv, D] into the cache at ``slot_mapping`` (skipping -1)."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, k[keep])
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, v[keep])


class TorchAttentionBackend(AttentionBackend):
    block_size_multiple = 16

    def forward(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        starts = meta.query_start_loc_host
        for i, seq_len in enumerate(meta.seq_lens_host):
            start, end = starts[i], starts[i + 1]
            num_blocks = -(-seq_len // self.block_size)
            blocks = meta.block_tables[i, :num_blocks]
            keys = k_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)  # [Hkv, L, D]
            values = v_cache[blocks].flatten(0, 1)[:seq_len].transpose(0, 1)
            queries = q[start:end].transpose(0, 1)  # [Hq, n, D]
            n = end - start
            # query j sits at position seq_len - n + j and sees keys up to it
            mask = torch.ones(n, seq_len, dtype=torch.bool, device=q.device).tril(diagonal=seq_len - n)
            o = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
            out[start:end] = o.transpose(0, 1)
        return out
