"""Flash-decoding over the paged KV cache: the kernel of every decode-only step.

One program per (sequence, KV head, context split) walks its share of the context in tiles of keys and
computes all query heads of the KV head's group at once (online softmax in float32, base 2); a second
kernel merges the splits by their log-sum-exp. Grid sizes depend only on the batch size, so a step can be
captured in a CUDA graph. The cache layout, and how an fp8 cache's scales are folded in, are
:mod:`triton_kernels`'. With an fp8 cache under a 16-bit model the tiles are converted to float16 and the
dots run in float16 (float8 -> float16 converts two values per instruction, -> bfloat16 does not); dots on
fp8 tensor cores (q and P quantised to e4m3) were measured and were not faster: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minivllm.plugins.attention.triton_kernels import LOG2E, precision


@triton.jit(do_not_specialize=["num_splits", "stride_bt"])
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    part_o_ptr,
    part_lse_ptr,
    o_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    qk_scale,
    num_splits,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_bt,
    stride_cb,
    stride_cs,
    stride_ch,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    DIRECT: tl.constexpr,
    FP8: tl.constexpr,
    FP16_DOTS: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [G, D]: the group's query heads
    if FP16_DOTS:  # an fp8 cache under a bf16 model: float8 -> float16 is one instruction per pair, -> bf16 is not
        q = q.to(tl.float16)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        block = tl.load(block_tables_ptr + seq * stride_bt + offs_n // BLOCK_SIZE, mask=n_mask, other=0)
        rows = block.to(tl.int64) * stride_cb + (offs_n % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # [N, D]
        v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        if FP8:
            scale_rows = (block.to(tl.int64) * BLOCK_SIZE + offs_n % BLOCK_SIZE) * tl.num_programs(1) + kv_head
            k_scale = tl.load(k_scale_ptr + scale_rows, mask=n_mask, other=0.0)
            v_scale = tl.load(v_scale_ptr + scale_rows, mask=n_mask, other=0.0)
            s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * (qk_scale * k_scale[None, :])
        else:
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [G, N]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if FP8:
            pv = tl.dot((p * v_scale[None, :]).to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    # an empty split (start >= end) leaves l_i = 0: its lse is -inf and the merge gives it no weight
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    mask = g_mask[:, None] & d_mask[None, :]
    if DIRECT:  # a single split is the result: no merge pass
        tl.store(
            o_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
            out.to(o_ptr.dtype.element_ty),
            mask=mask,
        )
    else:
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        part = (seq * tl.num_programs(1) * GROUP + heads) * num_splits + split  # [B, Hq, S] row index
        tl.store(part_o_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=mask)
        tl.store(part_lse_ptr + part, lse, mask=g_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_merge_kernel(
    part_o_ptr,
    part_lse_ptr,
    o_ptr,
    num_splits,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row = seq * tl.num_programs(1) + head
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    d_mask = offs_d < HEAD_DIM
    lse = tl.load(part_lse_ptr + row * num_splits + offs_s, mask=s_mask, other=float("-inf"))
    weight = tl.exp2(lse - tl.max(lse, 0))  # [S]; empty splits weigh 0
    parts = tl.load(
        part_o_ptr + (row * num_splits + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # [S, D]
    out = tl.sum(parts * weight[:, None], 0) / tl.sum(weight, 0)
    tl.store(o_ptr + seq * stride_ot + head * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty), mask=d_mask)


def decode_splits(num_seqs: int, num_kv_heads: int, num_sms: int, max_splits: int = 32) -> int:
    """How many context splits each (sequence, KV head) gets: enough programs for ~4 waves of the SMs."""
    return max(1, min(max_splits, triton.cdiv(4 * num_sms, num_seqs * num_kv_heads)))


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int,
    block_n: int = 128,
    num_warps: int = 4,
    num_stages: int = 2,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> None:
    """q/out [B, Hq, D] (one new token per sequence, already in the cache; fp8 with scales); sync-free,
    fixed grid. Tiles of 128 keys: the fastest shape on an H100 and an H200 for bf16 and fp8 caches alike
    (``benchmarks/decode_kernel.py``; at batch 256 on the H200: bf16 279 -> 273 us, fp8 354 -> 271 us)."""
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    if q.dtype == torch.float32:
        block_n = min(block_n, 32)
    direct = num_splits == 1
    parts = 0 if direct else num_seqs * num_heads * num_splits
    part_o = torch.empty(parts, head_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(parts, dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    fp8 = k_scales is not None
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        k_scales if fp8 else k_cache,
        v_scales if fp8 else v_cache,
        part_o,
        part_lse,
        out,
        block_tables,
        seq_lens,
        scale * LOG2E,
        num_splits,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        PRECISION=precision(q.dtype),
        DIRECT=direct,
        FP8=fp8,
        FP16_DOTS=fp8 and q.dtype == torch.bfloat16,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if direct:
        return
    _decode_merge_kernel[(num_seqs, num_heads)](
        part_o,
        part_lse,
        out,
        num_splits,
        out.stride(0),
        out.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_S=triton.next_power_of_2(num_splits),
    )
