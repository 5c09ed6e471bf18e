"""fp8 linears (``quantization="fp8"``): float8 e4m3 weights with a scale per output channel, activations
quantised per token as they come, one fp8 GEMM with both scales applied to its float32 sums.

On the GPU a decode step at tens of sequences reads every weight once, so halving the bytes of the weights
(bfloat16 -> fp8) is most of what fp8 gains there; Hopper's fp8 tensor cores also double the matmul rate of
prefill. Each weight row ``w`` is stored as ``q * s`` with ``s = max |w| / 448`` (``QuantizedWeight.fp8``,
the rule of the fp8 KV cache, ``quantize_fp8``), quantised at load from a floating-point checkpoint, whole
before it is sharded, or read from a compressed-tensors fp8 checkpoint (``core/loading/compressed_tensors.py``).
Each activation row ``x`` is quantised the same way, with its own scale computed on the device at every call
(no calibration, no host sync: CUDA graphs capture it), and ``torch._scaled_mm`` computes
``(q_x @ q_w.T) * s_x * s_w`` in float32 before rounding to bfloat16 (the Hopper fp8 GEMM on CUDA; a
reference implementation on the CPU). The GPU kernel takes only inner and output sizes that are multiples
of 16: a layer (shard) of other sizes keeps its fp8-rounded weight in the model's dtype and runs ``F.linear``
with unquantised activations. The embedding and the LM head stay in the model's dtype, as vLLM keeps them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minivllm.core.interfaces.attention import quantize_fp8
from minivllm.core.quantized_weight import QuantizedWeight

ALIGN = 16  # torch._scaled_mm on CUDA: the inner and output sizes must be multiples of this


class Fp8Linear(nn.Module):
    """An fp8 :class:`QuantizedWeight` [out, in] as ``_scaled_mm`` reads it (buffers: ``weight`` fp8
    [out, in], ``weight_scale`` float32 [1, out]); ``linear.py``'s layers call it in place of ``F.linear``."""

    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype):
        super().__init__()
        out_features, in_features = weight.shape
        self.scaled_mm = out_features % ALIGN == 0 and in_features % ALIGN == 0
        if self.scaled_mm:
            self.register_buffer("weight", weight.values)
            self.register_buffer("weight_scale", weight.scale.reshape(1, out_features).contiguous())
        else:
            self.register_buffer("weight", weight.dequantize(dtype))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.scaled_mm:
            return F.linear(x, self.weight, bias)
        rows = x.reshape(-1, x.shape[-1])  # [M, in]
        values, scale = quantize_fp8(rows)  # [M, in] fp8, [M] float32
        # the GPU's row-wise scaled GEMM writes only bfloat16; the CPU's writes any dtype
        out_dtype = torch.bfloat16 if x.is_cuda else x.dtype
        y = torch._scaled_mm(
            values, self.weight.t(), scale_a=scale[:, None], scale_b=self.weight_scale, out_dtype=out_dtype
        ).to(x.dtype)  # [M, out]
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if bias is None else y + bias
