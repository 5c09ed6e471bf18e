"""GGUF's 4- and 8-bit blocks as :class:`QuantizedWeight`: the layouts torch's CPU weight-only kernels read.

Q4_0, Q4_1 and Q4_K become int4 in groups of 32 along the input: each 32-value group of those formats is
``a * q + b`` with q in 0..15 (Q4_0: ``d * (q - 8)``; Q4_1: ``d * q + m``; Q4_K: ``d * sc * q - dmin * m``),
which ``(q - 8) * scale + zero`` holds exactly. Q8_0 and Q6_K become int8 with one scale per output row:
dequantised a chunk of rows at a time, then rounded to the row's largest magnitude / 127 (an error of at most
half that step). Other types return None and stay on the dequantised path. The GGUF reader calls
:func:`from_gguf` per tensor (never through a floating-point copy of the model); the linear layers
(``layers/quantized_linear.py``) shard, store and pack what it returns.

The GPU's ``quantization="fp8"`` uses the same container with float8 e4m3 values and one float32 scale per
output row (:meth:`QuantizedWeight.fp8`, or a compressed-tensors checkpoint's ``weight_scale``), run by
``layers/fp8_linear.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minivllm.core.interfaces.attention import FP8_DTYPE, quantize_fp8

GROUP = 32  # int4 group size: the block of Q4_0/Q4_1 and the sub-block of Q4_K
_CHUNK_ELEMENTS = 1 << 22  # rows converted at once: bounded float32 scratch, whatever the tensor


@dataclass
class QuantizedWeight:
    """A weight [out, in] kept quantized. int4: ``values`` uint8 in 0..15, ``scale``/``zero`` float32
    [out, in / 32], w = (values - 8) * scale + zero. int8 and fp8: ``values`` int8 or float8 e4m3,
    ``scale`` float32 [out, 1], ``zero`` None, w = values * scale."""

    values: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None

    @classmethod
    def fp8(cls, weight: torch.Tensor) -> QuantizedWeight:
        """``weight`` [out, in] in float8 e4m3, one scale per output row: ``max |row| / 448``, the rule of
        :func:`quantize_fp8`. Each value is off by at most 2^-4 of itself (3 mantissa bits), or by
        2^-10 * scale below the normal range (|value| < 2^-6 * scale)."""
        values, scale = quantize_fp8(weight)
        return cls(values, scale[:, None], None)

    @property
    def kind(self) -> str:
        if self.values.dtype == FP8_DTYPE:
            return "fp8"
        return "int8" if self.zero is None else "int4"

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def narrow(self, dim: int, start: int, length: int) -> QuantizedWeight:
        """This weight's rows (dim 0) or input columns (dim 1; int4: whole groups) ``start:start+length``."""
        if dim == 0:
            parts = (self.values, self.scale, self.zero)
            return QuantizedWeight(*(p if p is None else p.narrow(0, start, length) for p in parts))
        if self.zero is None:
            return QuantizedWeight(self.values.narrow(1, start, length), self.scale, None)
        if start % GROUP or length % GROUP:
            raise ValueError(f"an int4 weight splits along its input only at multiples of {GROUP}")
        return QuantizedWeight(
            self.values.narrow(1, start, length),
            self.scale.narrow(1, start // GROUP, length // GROUP),
            self.zero.narrow(1, start // GROUP, length // GROUP),
        )

    def map_rows(self, fn) -> QuantizedWeight:
        """``fn`` (a reordering of rows or a move to a device, [rows, ...] -> [rows, ...]) applied to every
        row-indexed tensor."""
        return QuantizedWeight(fn(self.values), fn(self.scale), None if self.zero is None else fn(self.zero))

    def empty_rows(self, rows: int) -> QuantizedWeight:
        """A weight of the same kind and input size with ``rows`` rows, to fill with :meth:`copy_rows_`."""
        parts = (self.values, self.scale, self.zero)
        return QuantizedWeight(*(p if p is None else p.new_zeros(rows, p.shape[1]) for p in parts))

    def copy_rows_(self, offset: int, part: QuantizedWeight) -> None:
        """Write ``part`` (same kind and input size) into rows ``offset:offset + part rows``."""
        for dst, src in zip((self.values, self.scale, self.zero), (part.values, part.scale, part.zero)):
            if dst is not None:
                dst.narrow(0, offset, src.shape[0]).copy_(src)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight in ``dtype`` [out, in]: the reference the kernels are checked against."""
        if self.zero is None:
            return (self.values.float() * self.scale).to(dtype)
        out, inp = self.shape
        grouped = (self.values.float() - 8).reshape(out, inp // GROUP, GROUP)
        return (grouped * self.scale[..., None] + self.zero[..., None]).reshape(out, inp).to(dtype)


def from_gguf(raw: np.ndarray, ggml_type: int, cols: int) -> QuantizedWeight | None:
    """``raw`` [rows, bytes of a row] of a GGUF tensor with rows of ``cols`` values as a
    :class:`QuantizedWeight`, or None for a type that stays on the dequantised path."""
    from gguf import GGMLQuantizationType as T

    ggml_type = T(ggml_type)
    if ggml_type in (T.Q4_0, T.Q4_1, T.Q4_K) and cols % GROUP == 0:
        groups = [
            _int4_groups(raw[start : start + _chunk_rows(cols)], ggml_type, cols)
            for start in range(0, raw.shape[0], _chunk_rows(cols))
        ]
        values, scale, zero = (torch.from_numpy(np.concatenate(part)) for part in zip(*groups))
        return QuantizedWeight(values, scale, zero)
    if ggml_type in (T.Q8_0, T.Q6_K):
        from gguf.quants import dequantize

        values = torch.empty(raw.shape[0], cols, dtype=torch.int8)
        scale = torch.empty(raw.shape[0], 1)
        for start in range(0, raw.shape[0], _chunk_rows(cols)):
            chunk = torch.from_numpy(dequantize(raw[start : start + _chunk_rows(cols)], ggml_type))  # [n, cols]
            step = chunk.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
            values[start : start + len(chunk)] = (chunk / step).round().to(torch.int8)
            scale[start : start + len(chunk)] = step
        return QuantizedWeight(values, scale, None)
    return None


def _chunk_rows(cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // cols)


def _int4_groups(raw: np.ndarray, ggml_type, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values uint8 [rows, cols], scale and zero float32 [rows, cols / 32]) of Q4_0/Q4_1/Q4_K rows."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import Q4_K

    rows = raw.shape[0]
    if ggml_type == T.Q4_K:  # super-blocks of 256: d, dmin (fp16), 12 bytes of 6-bit scales/mins, 128 of nibbles
        blocks = raw.reshape(-1, 144)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # [n, 1]
        dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        sc, m = Q4_K.get_scale_min(blocks[:, 4:16].copy())  # [n, 8] each: per sub-block of 32
        scale, offset = d * sc.astype(np.float32), -dmin * m.astype(np.float32)  # w = scale * q + offset
        # each 32 bytes hold two sub-blocks: the low nibbles the first, the high nibbles the second
        nibbles = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    else:  # blocks of 32: d (fp16), Q4_1 also m (fp16), then 16 bytes: low nibbles 0..15, high nibbles 16..31
        header = 2 if ggml_type == T.Q4_0 else 4
        blocks = raw.reshape(-1, header + 16)
        scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)  # [n, 1]
        if ggml_type == T.Q4_0:
            offset = -8 * scale  # w = d * (q - 8)
        else:
            offset = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        nibbles = blocks[:, header:].reshape(-1, 1, 16) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)
    values = (nibbles & np.uint8(0x0F)).reshape(rows, cols)
    scale = scale.reshape(rows, cols // GROUP)
    zero = offset.reshape(rows, cols // GROUP) + 8 * scale  # (q - 8) * scale + zero = scale * q + offset
    return values, scale, zero
