"""Fused Triton kernels for the layers' elementwise work on CUDA: one launch where eager PyTorch needs
several (dtype casts, reductions, a residual add, halves concatenated for rotary).

Each kernel rounds where the eager code rounds (to the activation dtype after the normalisation, after
SiLU), so bf16 results match the eager layers (and transformers) bit for bit or within one rounding.
The layers call these only for CUDA tensors when Triton imports (:func:`enabled`).
"""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def enabled(x: torch.Tensor) -> bool:
    return x.is_cuda and _triton_available()


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(
        x_ptr,
        res_ptr,
        out_ptr,
        res_out_ptr,
        w_ptr,
        eps,
        heads,
        stride_xt,
        stride_xh,
        stride_rt,
        N: tl.constexpr,
        BLOCK: tl.constexpr,
        HAS_RES: tl.constexpr,
        UNIT_OFFSET: tl.constexpr,
    ):
        # one row of N per program; rows are (token, head) pairs of a [T, H, N] view
        row = tl.program_id(0)
        t = row // heads
        h = row % heads
        offs = tl.arange(0, BLOCK)
        mask = offs < N
        x = tl.load(x_ptr + t * stride_xt + h * stride_xh + offs, mask=mask, other=0.0)
        if HAS_RES:
            x = x + tl.load(res_ptr + t * stride_rt + offs, mask=mask, other=0.0)  # rounds like x + residual
            tl.store(res_out_ptr + row * N + offs, x, mask=mask)
        xf = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xf * xf, 0) / N + eps)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if UNIT_OFFSET:  # Gemma: scaled by (1 + weight) in float32, then rounded
            out = xf * rstd * (1.0 + w)
        else:  # Llama: rounded to x's dtype, then scaled by the weight
            out = (xf * rstd).to(x.dtype).to(tl.float32) * w
        tl.store(out_ptr + row * N + offs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def silu_and_mul_kernel(x_ptr, out_ptr, stride_xt, d, BLOCK: tl.constexpr):
        t = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < d
        gate = tl.load(x_ptr + t * stride_xt + offs, mask=mask, other=0.0)
        up = tl.load(x_ptr + t * stride_xt + d + offs, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
        tl.store(out_ptr + t * d + offs, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=mask)

    @triton.jit
    def rotary_kernel(
        x_ptr,
        out_ptr,
        pos_ptr,
        cos_ptr,
        sin_ptr,
        heads,
        stride_xt,
        stride_xh,
        HALF: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_HALF: tl.constexpr,
    ):
        # x [T, H, 2 * HALF] -> out (contiguous): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
        t = tl.program_id(0)
        pos = tl.load(pos_ptr + t)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_HALF)
        d_mask = offs_d < HALF
        mask = (offs_h < heads)[:, None] & d_mask[None, :]
        cos = tl.load(cos_ptr + pos * 2 * HALF + offs_d, mask=d_mask, other=0.0)[None, :]
        sin = tl.load(sin_ptr + pos * 2 * HALF + offs_d, mask=d_mask, other=0.0)[None, :]
        src = x_ptr + t * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :]
        x1 = tl.load(src, mask=mask, other=0.0)
        x2 = tl.load(src + HALF, mask=mask, other=0.0)
        cos, sin = cos.to(x1.dtype).to(tl.float32), sin.to(x1.dtype).to(tl.float32)  # as the eager table cast
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        dst = out_ptr + (t * heads + offs_h[:, None]) * 2 * HALF + offs_d[None, :]
        tl.store(dst, (a * cos - b * sin).to(x1.dtype), mask=mask)
        tl.store(dst + HALF, (b * cos + a * sin).to(x1.dtype), mask=mask)

    return triton, rms_norm_kernel, silu_and_mul_kernel, rotary_kernel


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """View ``x`` [..., N] as [T, H, N] with the last dim contiguous: (view, H, stride_t, stride_h)."""
    if x.dim() == 2:
        x = x.unsqueeze(1)
    elif x.dim() != 3:
        x = x.reshape(-1, 1, x.shape[-1])
    assert x.stride(-1) == 1
    return x, x.shape[1], x.stride(0), x.stride(1)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, unit_offset: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [T, N] or [T, H, N] (per-head norm). With ``residual`` [T, N]: (norm(x + residual), x + residual).
    ``unit_offset`` scales by ``1 + weight`` before rounding, as :class:`~minivllm.layers.RMSNorm`'s option."""
    triton, kernel, _, _ = _kernels()
    view, heads, stride_t, stride_h = _rows(x)
    n = view.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    res = residual if residual is not None else view
    kernel[(view.shape[0] * heads,)](
        view,
        res,
        out,
        res_out,
        weight,
        eps,
        heads,
        stride_t,
        stride_h,
        res.stride(0),
        N=n,
        BLOCK=triton.next_power_of_2(n),
        HAS_RES=residual is not None,
        UNIT_OFFSET=unit_offset,
        num_warps=4 if n <= 2048 else 8,
    )
    return out if residual is None else (out, res_out)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2d] (gate and up) -> [T, d]."""
    triton, _, kernel, _ = _kernels()
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    out = torch.empty(x2.shape[0], d, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(d))
    kernel[(x2.shape[0], triton.cdiv(d, block))](x2, out, x2.stride(0), d, BLOCK=block)
    return out.view(*x.shape[:-1], d)


def rotary(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] (rows may be strided) rotated by the position's angles; cos/sin [max_pos, D] float32."""
    triton, _, _, kernel = _kernels()
    tokens, heads, dim = x.shape
    assert x.stride(2) == 1
    out = torch.empty(tokens, heads, dim, dtype=x.dtype, device=x.device)
    half = dim // 2
    kernel[(tokens,)](
        x,
        out,
        positions,
        cos,
        sin,
        heads,
        x.stride(0),
        x.stride(1),
        HALF=half,
        BLOCK_H=triton.next_power_of_2(heads),
        BLOCK_HALF=triton.next_power_of_2(half),
    )
    return out
