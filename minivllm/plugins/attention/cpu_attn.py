"""Batched attention over the paged cache for the CPU: what ``attention_backend="auto"`` picks there.

The torch reference backend calls ``scaled_dot_product_attention`` once per sequence per layer; a step of
16 decode rows over 30 layers is 480 calls, each with its own gather and mask. Here :meth:`prepare` does
the per-sequence work once per step (which tokens write, each decode row's cache slots and key mask, each
prompt chunk's slots and causal mask) and every layer then runs:

- all decode rows (one new token each) as one batch: one gather of their contexts, padded to the longest
  with a key mask (padding repeats a row's first slot, so it costs little memory traffic), straight into
  [rows x KV heads, length, head_dim] (a KV head's rows of each slot, so no transposed copy follows), and
  two batched matmuls in which a KV head's group of query heads plays the query rows, so grouped-query
  attention needs no repeated K/V;
- each prompt or chunk of one with one SDPA call (4-D: SDPA's CPU flash kernel; 3-D goes the math way):
  over its own new K/V with ``is_causal`` when it has no cached context, else over its gathered context
  with the offset causal mask.

With an fp8 cache it stores and reads :func:`quantize_fp8`'s values and scales like the torch backend
(whose cache helpers it shares), and prompts attend over what was stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata, KVScales
from minivllm.plugins.attention.torch_sdpa import context_slots, gather_slots, write_kv_cache


@dataclass
class Chunk:
    """A sequence with more than one new token: q/k/v rows ``start:end`` ending a context of ``seq_len``."""

    start: int
    end: int
    seq_len: int
    slots: torch.Tensor  # [seq_len] its context's cache slots
    mask: torch.Tensor | None  # [n, seq_len] additive causal mask; None: no cached context (is_causal)


@dataclass
class StepPlan:
    """What :meth:`CpuAttentionBackend.prepare` derives once per step for every layer."""

    write_rows: torch.Tensor | None  # [W] tokens that write (slot != -1); None: all of them
    write_slots: torch.Tensor  # [W]
    decode_rows: torch.Tensor | None  # [Bd] token rows of the one-token sequences; None: every row is one
    decode_heads: torch.Tensor | None  # [Bd * Hkv * Ld] rows of the cache viewed as [slots * Hkv, D]: each decode
    # row's context per KV head, padded (with its first slot) to the longest context Ld
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, Ld] float32, added to the scores: 0 in the context, -inf past it
    chunks: list[Chunk]


class CpuAttentionBackend(AttentionBackend):
    block_size_multiple = 1
    kv_cache_dtypes = ("auto", "fp8")

    @classmethod
    def is_available(cls, device: torch.device) -> bool:
        return device.type == "cpu"

    def prepare(self, meta: AttentionMetadata) -> None:
        slots = meta.slot_mapping
        keep = slots >= 0
        write_rows = None if bool(keep.all()) else keep.nonzero().flatten()
        starts, seq_lens = meta.query_start_loc_host, meta.seq_lens_host
        decode, chunks = [], []
        for i, seq_len in enumerate(seq_lens):
            start, end = starts[i], starts[i + 1]
            if end - start == 1:
                decode.append(i)
                continue
            n = end - start
            ctx_slots = context_slots(meta.block_tables[i : i + 1], seq_len, self.block_size)[0]
            mask = None
            if seq_len > n:  # query j sits at position seq_len - n + j and sees keys up to it
                visible = torch.ones(n, seq_len, dtype=torch.bool).tril(diagonal=seq_len - n)
                mask = self._additive(visible)
            chunks.append(Chunk(start, end, seq_len, ctx_slots, mask))
        decode_rows = decode_heads = decode_mask = None
        if decode:
            length = max(seq_lens[i] for i in decode)
            if len(decode) < meta.num_seqs:
                decode_rows = torch.tensor([starts[i] for i in decode])
                index = torch.tensor(decode)
                tables, lens = meta.block_tables.index_select(0, index), meta.seq_lens.index_select(0, index)
            else:
                tables, lens = meta.block_tables, meta.seq_lens
            decode_slots = context_slots(tables, length, self.block_size, lens)  # [Bd, Ld]
            heads = torch.arange(self.num_kv_heads)[None, :, None]
            decode_heads = (decode_slots[:, None, :] * self.num_kv_heads + heads).flatten()
            visible = torch.arange(length)[None, :] < lens[:, None]
            decode_mask = self._additive(visible, torch.float32)[:, None, None, :]
        meta.backend_state = StepPlan(
            write_rows,
            slots if write_rows is None else slots[write_rows],
            decode_rows,
            decode_heads,
            decode_mask,
            chunks,
        )

    def _additive(self, visible: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A bool mask -> 0 where visible, -inf elsewhere, in ``dtype`` (the model's by default, for SDPA)."""
        return torch.zeros(visible.shape, dtype=dtype or self.dtype).masked_fill_(~visible, float("-inf"))

    def forward(
        self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float, kv_scales: KVScales | None = None
    ):
        plan: StepPlan = meta.backend_state
        new_k, new_v = (k, v) if plan.write_rows is None else (k[plan.write_rows], v[plan.write_rows])
        write_kv_cache(new_k, new_v, k_cache, v_cache, plan.write_slots, kv_scales)
        k_scales, v_scales = (kv_scales.k, kv_scales.v) if kv_scales is not None else (None, None)
        if plan.decode_rows is None and not plan.chunks:
            return self._decode(q, k_cache, v_cache, k_scales, v_scales, plan, scale)
        out = torch.empty_like(q)
        if plan.decode_heads is not None:
            decoded = self._decode(
                q.index_select(0, plan.decode_rows), k_cache, v_cache, k_scales, v_scales, plan, scale
            )
            out.index_copy_(0, plan.decode_rows, decoded)
        for chunk in plan.chunks:
            queries = q[chunk.start : chunk.end].transpose(0, 1)[None]  # [1, Hq, n, D]
            if chunk.mask is None and kv_scales is None:  # a whole prompt: its own K/V, causal
                keys, values = k[chunk.start : chunk.end], v[chunk.start : chunk.end]
            else:
                keys = gather_slots(k_cache, k_scales, chunk.slots, q.dtype)  # [L, Hkv, D]
                values = gather_slots(v_cache, v_scales, chunk.slots, q.dtype)
            o = F.scaled_dot_product_attention(
                queries,
                keys.transpose(0, 1)[None],
                values.transpose(0, 1)[None],
                attn_mask=chunk.mask,
                is_causal=chunk.mask is None,
                scale=scale,
                enable_gqa=True,
            )
            out[chunk.start : chunk.end] = o[0].transpose(0, 1)
        return out

    def _decode(self, q, k_cache, v_cache, k_scales, v_scales, plan: StepPlan, scale: float) -> torch.Tensor:
        """q [Bd, Hq, D], one new token per sequence -> [Bd, Hq, D]: one gather each of K and V and two batched
        matmuls. The scores and softmax run in float32 (as SDPA does inside); by hand because SDPA's CPU
        kernel is slower for these tiny queries, in bfloat16 about twice as slow."""
        rows, heads, dim = q.shape
        pairs = rows * self.num_kv_heads
        keys = gather_heads(k_cache, k_scales, plan.decode_heads, q.dtype).view(pairs, -1, dim)  # [Bd * Hkv, Ld, D]
        values = gather_heads(v_cache, v_scales, plan.decode_heads, q.dtype).view(pairs, -1, dim)
        queries = q.reshape(pairs, heads // self.num_kv_heads, dim)  # a KV head's query heads as its query rows
        scores = torch.bmm(queries, keys.transpose(1, 2)).float().mul_(scale)
        scores = scores.view(rows, self.num_kv_heads, -1, keys.shape[1]).add_(plan.decode_mask)
        probs = scores.softmax(-1).to(q.dtype).view(pairs, -1, keys.shape[1])  # [Bd * Hkv, Hq / Hkv, Ld]
        return torch.bmm(probs, values).view(rows, heads, dim)


def gather_heads(cache, scales, rows: torch.Tensor, dtype) -> torch.Tensor:
    """Rows [N] of the cache viewed as [slots * Hkv, D] (one KV head of one slot each) -> [N, D] in
    ``dtype``, dequantised with an fp8 cache (whose scales are per slot and head)."""
    flat = cache.view(-1, cache.shape[-1])
    if scales is None:
        return flat.index_select(0, rows).to(dtype)
    values = flat.view(torch.uint8).index_select(0, rows).view(cache.dtype).to(dtype)  # fp8: no CPU indexing kernel
    return values * scales.reshape(-1, 1).index_select(0, rows).to(dtype)
