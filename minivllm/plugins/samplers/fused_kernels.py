"""Triton kernels of the `fused` sampler: Gumbel-max over the whole vocabulary in one pass.

Each row is split into chunks, one program per (row, chunk); a program reads its chunk of logits once
(in the model's dtype), scores each token ``logit / T + g`` with Gumbel noise ``g = -log(-log u)`` drawn
by Philox from the row's seed and the token's index (one draw of four uniforms per four tokens; greedy
rows score the logit alone), drops tokens
below the row's floor (top-k / top-p / min-p), and keeps the best score and its index per lane; a second,
tiny kernel picks each row's best chunk. Ties go to the smallest index, as ``torch.argmax``'s do.
Arguments that change from step to step are not specialised on, and no block size depends on the batch,
so no step recompiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
_NO_INDEX = 2**31 - 1


@triton.jit
def _update(best_val, best_idx, base, offs, end, u, inv_t, floor):
    """Score a quarter block's tokens (the logit alone when greedy: inv_t == 0) and keep each lane's best."""
    mask = offs < end
    x = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32)
    if inv_t > 0.0:
        score = x * inv_t - tl.log(-tl.log(u))
    else:
        score = x
    score = tl.where(mask & (x >= floor), score, float("-inf"))
    better = score > best_val  # strictly: a lane keeps its first (smallest) index among ties
    return tl.where(better, score, best_val), tl.where(better, offs, best_idx)


@triton.jit(do_not_specialize=["stride", "vocab", "chunk_size", "num_chunks"])
def _chunk_kernel(
    logits_ptr,
    stride,
    inv_temp_ptr,
    floor_ptr,
    seed_ptr,
    part_val_ptr,
    part_idx_ptr,
    vocab,
    chunk_size,
    num_chunks,
    BLOCK: tl.constexpr,
    NO_INDEX: tl.constexpr,
):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    inv_t = tl.load(inv_temp_ptr + row)
    floor = tl.load(floor_ptr + row)
    seed = tl.load(seed_ptr + row)
    start = chunk * chunk_size
    end = tl.minimum(start + chunk_size, vocab)
    QUARTER: tl.constexpr = BLOCK // 4
    best_val = tl.full([QUARTER], float("-inf"), tl.float32)
    best_idx = tl.full([QUARTER], NO_INDEX, tl.int32)
    base = logits_ptr + row.to(tl.int64) * stride
    lanes = tl.arange(0, QUARTER)
    for off in range(start, end, BLOCK):
        # one Philox draw gives four uniforms, one for each quarter of the block (token index / 4 keys it)
        u0, u1, u2, u3 = tl.rand4x(seed, off // 4 + lanes)
        best_val, best_idx = _update(best_val, best_idx, base, off + lanes, end, u0, inv_t, floor)
        best_val, best_idx = _update(best_val, best_idx, base, off + QUARTER + lanes, end, u1, inv_t, floor)
        best_val, best_idx = _update(best_val, best_idx, base, off + 2 * QUARTER + lanes, end, u2, inv_t, floor)
        best_val, best_idx = _update(best_val, best_idx, base, off + 3 * QUARTER + lanes, end, u3, inv_t, floor)
    top = tl.max(best_val, 0)
    index = tl.min(tl.where(best_val == top, best_idx, NO_INDEX), 0)
    tl.store(part_val_ptr + row * num_chunks + chunk, top)
    tl.store(part_idx_ptr + row * num_chunks + chunk, index)


@triton.jit(do_not_specialize=["num_chunks"])
def _pick_kernel(part_val_ptr, part_idx_ptr, out_ptr, num_chunks, BLOCK_C: tl.constexpr, NO_INDEX: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < num_chunks
    values = tl.load(part_val_ptr + row * num_chunks + offs, mask=mask, other=float("-inf"))
    indices = tl.load(part_idx_ptr + row * num_chunks + offs, mask=mask, other=NO_INDEX)
    top = tl.max(values, 0)
    tl.store(out_ptr + row, tl.min(tl.where(values == top, indices, NO_INDEX), 0).to(tl.int64))


def gumbel_argmax(
    logits: torch.Tensor, inv_temp: torch.Tensor, floor: torch.Tensor, seeds: torch.Tensor, num_sms: int
) -> torch.Tensor:
    """logits [B, V] (any float dtype, rows contiguous); inv_temp [B] float32 (0: greedy); floor [B] float32
    (tokens whose logit is below are out; -inf: none); seeds [B] int64. Returns [B] int64."""
    rows, vocab = logits.shape
    assert logits.stride(1) == 1
    # enough programs for ~4 waves of the SMs, each over whole blocks of the row
    num_chunks = max(1, min(triton.cdiv(vocab, BLOCK), triton.cdiv(4 * num_sms, rows)))
    chunk_size = triton.cdiv(triton.cdiv(vocab, num_chunks), BLOCK) * BLOCK
    num_chunks = triton.cdiv(vocab, chunk_size)
    part_val = torch.empty(rows, num_chunks, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(rows, num_chunks, dtype=torch.int32, device=logits.device)
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    _chunk_kernel[(rows, num_chunks)](
        logits,
        logits.stride(0),
        inv_temp,
        floor,
        seeds,
        part_val,
        part_idx,
        vocab,
        chunk_size,
        num_chunks,
        BLOCK=BLOCK,
        NO_INDEX=_NO_INDEX,
        num_warps=4,
    )
    # BLOCK_C from the vocabulary alone, not the batch: one compiled kernel for every batch size
    block_c = triton.next_power_of_2(triton.cdiv(vocab, BLOCK))
    _pick_kernel[(rows,)](part_val, part_idx, out, num_chunks, BLOCK_C=block_c, NO_INDEX=_NO_INDEX)
    return out
