"""fp8 linears (layers/fp8_linear.py): ``torch._scaled_mm`` against float64 arithmetic on the same quantized
operands (equal up to float32 summation order), the weight quantisation's error per channel within what 3
mantissa bits allow, layers of sizes the GPU kernel does not take kept in the model's dtype, and the
tensor-parallel layers sharding the scales with their weights."""

import pytest
import torch
import torch.nn.functional as F

from minivllm.core.interfaces.attention import FP8_MAX, quantize_fp8
from minivllm.core.quantized_weight import QuantizedWeight
from minivllm.layers.fp8_linear import Fp8Linear
from minivllm.layers.linear import ColumnParallelLinear, RowParallelLinear
from minivllm.testing.attention import dequantized


def weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Rows of magnitudes from 1e-4 to 10 (each row's own scale matters), one row all zeros."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-4, 1, rows)[:, None]
    w[rows // 2] = 0
    return w


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_scaled_mm_equals_float64_on_the_same_quantized_operands(rows):
    w, x, bias = weight(96, 256), torch.randn(2, rows, 256) * 3, torch.randn(96)
    q = QuantizedWeight.fp8(w)
    linear = Fp8Linear(q, torch.float32)
    assert linear.scaled_mm and linear.weight.dtype == torch.float8_e4m3fn
    xq, wq = dequantized(*quantize_fp8(x)).double(), q.dequantize(torch.float64)
    reference = xq @ wq.t() + bias.double()
    # float32 sums of 256 products: off by at most 256 * 2^-24 of the sum of their magnitudes
    bound = 256 * 2**-24 * (xq.abs() @ wq.abs().t() + bias.double().abs())
    assert ((linear(x, bias).double() - reference).abs() <= bound).all()


def test_weight_error_per_channel():
    """Each row's largest magnitude is exact (it maps to 448); every value is off by at most 2^-4 of itself
    in the normal range of e4m3 and by 2^-10 of the row's scale below it; a zero row stays zero."""
    w = weight(64, 512)
    q = QuantizedWeight.fp8(w)
    scale = q.scale  # [64, 1]
    torch.testing.assert_close(scale[:, 0], w.abs().amax(1).clamp(min=1e-12) / FP8_MAX, rtol=0, atol=0)
    error = (q.dequantize() - w).abs()
    bound = torch.maximum(w.abs() * 2**-4, scale * 2**-10) * (1 + 1e-6)
    assert (error <= bound).all()
    top = w.abs().argmax(1)
    assert (error.gather(1, top[:, None]) <= 1e-6 * w.abs().amax(1, keepdim=True)).all()
    assert (q.dequantize()[32] == 0).all()


def test_sizes_the_gpu_kernel_does_not_take_stay_in_the_model_dtype():
    w, x = weight(24, 40), torch.randn(5, 40)
    q = QuantizedWeight.fp8(w)
    linear = Fp8Linear(q, torch.float32)
    assert not linear.scaled_mm and linear.weight.dtype == torch.float32
    torch.testing.assert_close(linear(x, None), F.linear(x, q.dequantize()), rtol=0, atol=0)


class _Ranks:
    """A stand-in TensorParallel of ``size`` ranks for layers built one rank at a time (no reduction)."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def shard(self, n: int, what: str) -> int:
        return n // self.size

    def all_reduce(self, x):
        return x


@pytest.mark.parametrize("layer_cls", [ColumnParallelLinear, RowParallelLinear])
def test_shards_carry_their_scales(layer_cls):
    """Column-parallel: each rank's rows and their scales; row-parallel: each rank's columns with every
    row's whole scale (quantized before sharding): the ranks' outputs put together are the one-rank output."""
    w, x = weight(64, 128), torch.randn(3, 128)
    outputs = []
    for rank in range(2):
        layer = layer_cls(128, 64, tp=_Ranks(rank, 2))
        layer.use_fp8()
        layer.weight.weight_loader(layer.weight, w)
        layer.pack_weights()
        assert isinstance(layer.quantized, Fp8Linear) and layer.weight.numel() == 0
        outputs.append((rank, layer))
    whole = QuantizedWeight.fp8(w)
    if layer_cls is ColumnParallelLinear:
        scales = torch.cat([layer.quantized.weight_scale for _, layer in outputs], 1)
        got = torch.cat([layer(x) for _, layer in outputs], -1)
        reference = dequantized(*quantize_fp8(x)) @ whole.dequantize().t()
    else:
        scales = outputs[0][1].quantized.weight_scale
        torch.testing.assert_close(outputs[1][1].quantized.weight_scale, scales, rtol=0, atol=0)
        parts = [slice(64 * rank, 64 * (rank + 1)) for rank in range(2)]
        got = sum(layer(x[:, parts[rank]]) for rank, layer in outputs)
        # each rank quantizes its own slice of the activations
        reference = sum(dequantized(*quantize_fp8(x[:, part])) @ whole.dequantize()[:, part].t() for part in parts)
    torch.testing.assert_close(scales, whole.scale.t(), rtol=0, atol=0)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
