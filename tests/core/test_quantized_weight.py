"""GGUF blocks requantised for the CPU's weight-only kernels (core/quantized_weight.py), against gguf-py's
own dequantisation: Q4_0/Q4_1/Q4_K exactly (the int4 groups hold the same values), Q8_0/Q6_K within half
a step of the per-row int8 (the row's largest magnitude / 127 / 2)."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from minivllm.core.quantized_weight import from_gguf

ROWS, COLS = 6, 512


def blocks(qtype: T, seed: int = 0) -> np.ndarray:
    """[ROWS, bytes per row] of ``qtype``: gguf-py's quantizer where it has one, else random blocks with
    sane float16 scales (gguf-py has no Q4_K/Q6_K quantizer; any bytes are valid blocks otherwise)."""
    rng = np.random.default_rng(seed)
    if qtype in (T.Q4_0, T.Q4_1, T.Q8_0):
        return quantize(rng.standard_normal((ROWS, COLS)).astype(np.float32) * 0.05, qtype)
    block, nbytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (ROWS * COLS // block, nbytes), dtype=np.uint8)
    scales = (rng.random((len(raw), 2)) * 0.01 + 0.001).astype(np.float16).view(np.uint8)
    if qtype == T.Q4_K:  # d and dmin lead the block
        raw[:, 0:4] = scales
    else:  # Q6_K: d closes it
        raw[:, -2:] = scales[:, 0:2]
    return raw.reshape(ROWS, -1)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q4_K])
def test_4bit_types_are_held_exactly_as_int4_groups(qtype):
    raw = blocks(qtype)
    weight = from_gguf(raw, qtype, COLS)
    assert weight.kind == "int4" and weight.shape == (ROWS, COLS) and weight.values.max() <= 15
    reference = torch.from_numpy(dequantize(raw, qtype))
    torch.testing.assert_close(weight.dequantize(), reference, rtol=0, atol=1e-6 * reference.abs().max().item())


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q6_K])
def test_8bit_types_are_requantised_per_row_within_half_a_step(qtype):
    raw = blocks(qtype)
    weight = from_gguf(raw, qtype, COLS)
    assert weight.kind == "int8" and weight.scale.shape == (ROWS, 1)
    reference = torch.from_numpy(dequantize(raw, qtype))
    half_step = reference.abs().amax(1, keepdim=True) / 127 / 2
    assert ((weight.dequantize() - reference).abs() <= half_step * 1.0001).all()


def test_other_types_stay_on_the_dequantised_path():
    assert from_gguf(np.zeros((2, 4 * 64), np.uint8), T.F32, 64) is None
    assert from_gguf(blocks(T.Q4_0)[:, :18], T.Q4_0, 32) is not None


def test_narrowing_keeps_groups_whole():
    weight = from_gguf(blocks(T.Q4_1), T.Q4_1, COLS)
    full = weight.dequantize()
    torch.testing.assert_close(weight.narrow(0, 2, 3).dequantize(), full[2:5], rtol=0, atol=0)
    torch.testing.assert_close(weight.narrow(1, 64, 128).dequantize(), full[:, 64:192], rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        weight.narrow(1, 16, 64)
