"""oneDNN-packed linears on the CPU: in bf16 the same bits as F.linear, in float32 the same up to rounding;
used by the runner in both unless turned off."""

import pytest
import torch
import torch.nn.functional as F

from minivllm import LLM, SamplingParams
from minivllm.layers import cpu_linear
from tests.checkpoints import random_prompts

pytestmark = pytest.mark.skipif(
    not cpu_linear.can_pack(torch.empty(1, dtype=torch.bfloat16)), reason="no oneDNN bf16 linear in this torch build"
)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_packed_linear_equals_f_linear_in_bf16(rows):
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 64, dtype=torch.bfloat16), torch.randn(96, dtype=torch.bfloat16)
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    packed = cpu_linear.pack(weight)
    assert torch.equal(cpu_linear.packed_linear(x, packed, bias), F.linear(x, weight, bias))
    assert torch.equal(cpu_linear.packed_linear(x, packed, None), F.linear(x, weight))


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_packed_linear_matches_f_linear_in_float32(rows):
    """oneDNN sums in another order than F.linear's BLAS: equal up to float32 rounding, not bit for bit."""
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 640), torch.randn(96)
    x = torch.randn(rows, 640)
    packed = cpu_linear.pack(weight)
    torch.testing.assert_close(
        cpu_linear.packed_linear(x, packed, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-4
    )


def packed_layers(llm) -> int:
    return sum(getattr(m, "packed", None) is not None for m in llm.engine.executor.runner.model.modules())


def test_the_runner_packs_unless_told_not_to(llama_path):
    prompts = random_prompts(3, 4, 30, seed=7)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    settings = dict(dtype="bfloat16", kvcache_block_size=16, max_model_len=128)
    packed, plain = LLM(llama_path, **settings), LLM(llama_path, cpu_weight_prepack=False, **settings)
    assert packed_layers(packed) == 2 * 4 + 1  # qkv, o, gate_up, down of 2 layers, and the LM head
    assert packed_layers(plain) == 0
    assert packed.generate(prompts, params, use_tqdm=False) == plain.generate(prompts, params, use_tqdm=False)
    float32 = dict(settings, dtype="float32")
    assert packed_layers(LLM(llama_path, **float32)) == 2 * 4 + 1  # greedy parity in float32: test_parity.py
    assert packed_layers(LLM(llama_path, cpu_weight_prepack=False, **float32)) == 0
