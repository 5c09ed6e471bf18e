"""Triton kernels for attention over the paged KV cache.

Cache layout (one layer): ``[num_blocks, block_size, num_kv_heads, head_dim]``. Token ``n`` of sequence
``i`` lives in block ``block_tables[i, n // block_size]`` at row ``n % block_size``; kernels gather the
block index per key, so any block size works. Head dims that are not powers of two are padded with
masks. Softmax runs online in float32 (base 2). Integer arguments that change from batch to batch (the
block table's width, the split count) are not specialised on, so a new batch never recompiles a kernel.

- :func:`store_kv`: scatter the new tokens' K/V into their cache slots (with an fp8 cache: each
  (token, head) row divided by its own scale, ``max |x| / 448``, stored beside it; see
  ``core/interfaces/attention.py``). The attention kernels read fp8 rows back as the query's dtype
  and fold the scales into the scores (K) and the probabilities (V), so no dequantised copy is made.
- :func:`paged_prefill`: causal attention of any batch (prompt chunks over a cached context, decode
  tokens) — one program per (sequence, query head, tile of new tokens).
- :func:`~minivllm.plugins.attention.triton_decode.paged_decode` (in ``triton_decode.py``): flash-decoding
  for steps of one new token per sequence.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minivllm.core.interfaces.attention import FP8_MAX

LOG2E = 1.4426950408889634


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, stride_k, stride_v, ROW: tl.constexpr, BLOCK: tl.constexpr
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    offs = tl.arange(0, BLOCK)
    # (a tensor compare, not the scalar `slot >= 0`: Triton 3.9's interpreter refuses a scalar-bool mask term)
    mask = (offs < ROW) & (offs * 0 + slot >= 0)
    k = tl.load(k_ptr + t * stride_k + offs, mask=mask)
    v = tl.load(v_ptr + t * stride_v + offs, mask=mask)
    tl.store(k_cache_ptr + slot * ROW + offs, k, mask=mask)
    tl.store(v_cache_ptr + slot * ROW + offs, v, mask=mask)


@triton.jit
def _store_fp8_rows(
    src_ptr,
    cache_ptr,
    scale_ptr,
    slot,
    rows,
    mask,
    offs_h,
    h_mask,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    FP8_MAX: tl.constexpr,
):
    x = tl.load(src_ptr + rows, mask=mask, other=0.0).to(tl.float32)  # [H, D]
    scale = tl.maximum(tl.max(tl.abs(x), 1), 1e-12) / FP8_MAX  # [H]: each row's own
    tl.store(cache_ptr + slot * HEADS * HEAD_DIM + rows, (x / scale[:, None]).to(cache_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + slot * HEADS + offs_h, scale, mask=h_mask)


@triton.jit
def _store_kv_fp8_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    slot_ptr,
    stride_k,
    stride_v,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8_MAX: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_mask = (offs_h < HEADS) & (offs_h * 0 + slot >= 0)
    mask = h_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows = offs_h[:, None] * HEAD_DIM + offs_d[None, :]  # [H, D] within the token's Hkv*D row
    _store_fp8_rows(
        k_ptr + t * stride_k, k_cache_ptr, k_scale_ptr, slot, rows, mask, offs_h, h_mask, HEADS, HEAD_DIM, FP8_MAX
    )
    _store_fp8_rows(
        v_ptr + t * stride_v, v_cache_ptr, v_scale_ptr, slot, rows, mask, offs_h, h_mask, HEADS, HEAD_DIM, FP8_MAX
    )


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> None:
    """k/v [T, Hkv, D] (rows may be strided, each row's Hkv*D contiguous) -> cache at ``slot_mapping``
    (-1 skips the token); with scales ([num_blocks, block_size, Hkv]) the cache is fp8."""
    num_tokens, num_kv_heads, head_dim = k.shape
    row = num_kv_heads * head_dim
    assert k.stride(1) == head_dim and k.stride(2) == 1 and v.stride(1) == head_dim and v.stride(2) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    if k_scales is None:
        _store_kv_kernel[(num_tokens,)](
            k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0), ROW=row, BLOCK=triton.next_power_of_2(row)
        )
        return
    _store_kv_fp8_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        k_scales,
        v_scales,
        slot_mapping,
        k.stride(0),
        v.stride(0),
        HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        FP8_MAX=FP8_MAX,
    )


@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    o_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_ptr,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_bt,
    stride_cb,
    stride_cs,
    stride_ch,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    FP8: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    tile = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    if tile * BLOCK_M < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        ctx = seq_len - q_len  # tokens before the first new one
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < q_len
        d_mask = offs_d < HEAD_DIM
        q = tl.load(
            q_ptr + (q_start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
            mask=m_mask[:, None] & d_mask[None, :],
            other=0.0,
        )  # [M, D]
        kv_head = head // GROUP
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # the last row of this tile sees keys up to position ctx + its index
        kv_end = tl.minimum(seq_len, ctx + (tile + 1) * BLOCK_M)
        for start in range(0, kv_end, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < kv_end
            block = tl.load(block_tables_ptr + seq * stride_bt + offs_n // BLOCK_SIZE, mask=n_mask, other=0)
            rows = block.to(tl.int64) * stride_cb + (offs_n % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # [N, D]
            if FP8:
                scale_rows = (block.to(tl.int64) * BLOCK_SIZE + offs_n % BLOCK_SIZE) * NUM_KV_HEADS + kv_head
                k_scale = tl.load(k_scale_ptr + scale_rows, mask=n_mask, other=0.0)
                s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * (qk_scale * k_scale[None, :])
            else:
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [M, N], base-2 logits
            visible = ((ctx + offs_m)[:, None] >= offs_n[None, :]) & n_mask[None, :]
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            if FP8:
                v_scale = tl.load(v_scale_ptr + scale_rows, mask=n_mask, other=0.0)
                pv = tl.dot((p * v_scale[None, :]).to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
            else:
                pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(
            o_ptr + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
            out.to(o_ptr.dtype.element_ty),
            mask=m_mask[:, None] & d_mask[None, :],
        )


def precision(dtype: torch.dtype) -> str:
    # float32 models are the parity reference: keep their dots in full float32, not tf32
    return "ieee" if dtype == torch.float32 else "tf32"


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    scale: float,
    block_m: int = 64,
    block_n: int = 64,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> None:
    """q/out [T, Hq, D]; caches [num_blocks, block_size, Hkv, D] (fp8 with scales [num_blocks, block_size,
    Hkv]); any mix of prefill and decode rows."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs = seq_lens.shape[0]
    if q.dtype == torch.float32:  # float32 tiles take twice the shared memory
        block_m, block_n = min(block_m, 32), min(block_n, 32)
    grid = (num_seqs, num_heads, triton.cdiv(max_query_len, block_m))
    fp8 = k_scales is not None
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        k_scales if fp8 else k_cache,
        v_scales if fp8 else v_cache,
        out,
        block_tables,
        seq_lens,
        query_start_loc,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        GROUP=num_heads // num_kv_heads,
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PRECISION=precision(q.dtype),
        FP8=fp8,
        NUM_KV_HEADS=num_kv_heads,
        num_warps=4,
        num_stages=2,
    )
