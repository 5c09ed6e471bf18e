"""``quantization="fp8"`` on CUDA: ``torch._scaled_mm``'s row-wise scaled fp8 GEMM against float64 on the same
quantized operands (within its bfloat16 output's rounding), and the engine with fp8 weights under CUDA graphs:
a compressed-tensors checkpoint (read on the host, moved to the device) runs exactly as online quantization,
with the fp8 KV cache too."""

import pytest
import torch

from minivllm import LLM
from minivllm.core.interfaces.attention import quantize_fp8
from minivllm.core.quantized_weight import QuantizedWeight
from minivllm.layers.fp8_linear import Fp8Linear
from minivllm.testing.attention import dequantized
from tests.core.test_fp8_weights import fp8_layers, tokens, write_compressed_tensors

CUDA = dict(
    device="cuda",
    attention_backend="triton",
    dtype="bfloat16",
    gpu_memory_utilization=0.3,
    kvcache_block_size=16,
    max_model_len=256,
)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_scaled_mm_on_cuda(rows):
    torch.manual_seed(0)
    w, x = torch.randn(96, 256, device="cuda") * 0.05, torch.randn(rows, 256, device="cuda").bfloat16()
    q = QuantizedWeight.fp8(w)
    linear = Fp8Linear(q, torch.bfloat16)
    assert linear.scaled_mm
    xq, wq = dequantized(*quantize_fp8(x)).double(), q.dequantize(torch.float64)
    reference = xq @ wq.t()
    # float32 sums of 256 products, then rounded to bfloat16 (8 bits: half a step is 2^-9 of the value)
    bound = 256 * 2**-24 * (xq.abs() @ wq.abs().t()) + 2**-8 * reference.abs()
    assert ((linear(x, None).double() - reference).abs() <= bound).all()


def test_engine_with_graphs(checkpoints, tmp_path):
    path = checkpoints["llama"]
    compressed = write_compressed_tensors(path, str(tmp_path / "llama-fp8"))
    online = LLM(path, quantization="fp8", **CUDA)
    assert online.engine.executor.runner.graphs is not None and fp8_layers(online) == 2 * 4
    assert all(m.weight.is_cuda for m in online.engine.executor.runner.model.modules() if isinstance(m, Fp8Linear))
    assert tokens(LLM(compressed, quantization="fp8", **CUDA)) == tokens(online)
    fp8_kv = dict(CUDA, kv_cache_dtype="fp8")
    assert tokens(LLM(compressed, quantization="fp8", **fp8_kv)) == tokens(LLM(path, quantization="fp8", **fp8_kv))
