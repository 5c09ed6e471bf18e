"""Linear weights kept quantized on the CPU: GGUF's 4- and 8-bit blocks, read by torch's weight-only kernels.

The dequantised path turns a 92 MB Q4_1 file into 270 MB of bfloat16, and one stream's decode step reads
every weight once: on the CPU it is bound by memory bandwidth, so reading 4-bit weights is faster
(``benchmarks/cpu_linears.py``: 1.2-2.8x per projection of SmolLM2 at one row; slower than oneDNN's packed
bfloat16 from about 16 rows, where the matmul is bound by arithmetic). GGUF tensors are requantised at load,
one tensor at a time and never through a bfloat16 copy of the model, into the layouts of torch's kernels:

- Q4_0, Q4_1 and Q4_K -> int4 in groups of 32 along the input, for ``aten._weight_int4pack_mm_for_cpu``.
  Each 32-value group of those formats is ``a * q + b`` with q in 0..15 (Q4_0: ``d * (q - 8)``; Q4_1:
  ``d * q + m``; Q4_K: ``d * sc * q - dmin * m``), which the kernel's ``(q - 8) * scale + zero`` holds
  exactly: only ``scale`` and ``zero`` are rounded, to the activations' dtype.
- Q8_0 and Q6_K -> int8 with one scale per output row, for ``aten._weight_int8pack_mm``: dequantised a chunk
  of rows at a time, then rounded to the row's largest magnitude / 127 (an error of at most half that step).

Other types stay on the dequantised path. ``EngineConfig.quantization="gguf"`` turns this on; ``"none"``
(the default) is the reference. The GGUF reader builds the weights (``core/quantized_weight.py``); ``linear.py``
calls :class:`QuantizedWeight`'s ``narrow``/``copy_rows_`` as it loads shards, and packs the weight into
:class:`PackedQuantizedLinear` once loading is done.
"""

from __future__ import annotations

import torch

from minivllm.core.quantized_weight import GROUP, QuantizedWeight
from minivllm.core.utils import cdiv


class PackedQuantizedLinear:
    """A :class:`QuantizedWeight` in its kernel's layout, scales in the activations' ``dtype``;
    ``linear.py``'s layers call it in place of ``F.linear``."""

    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype):
        self.out_features, original = weight.shape[0], weight
        if weight.zero is None:
            self.values, self.scales = weight.values, weight.scale[:, 0].to(dtype)
        else:
            padded = cdiv(self.out_features, 16) * 16  # the int4 layout packs rows by 16: pad with zero rows
            weight = weight.empty_rows(padded)
            weight.copy_rows_(0, original)
            self.values = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight.values.int(), 1)
            self.scales = torch.stack([weight.scale, weight.zero], -1).transpose(0, 1).contiguous().to(dtype)
        self.int4 = weight.zero is not None

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # the kernels take 2-D activations
        if self.int4:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.values, GROUP, self.scales)
        else:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.values, self.scales)
        y = y[:, : self.out_features].reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias
