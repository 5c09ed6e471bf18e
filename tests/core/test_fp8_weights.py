"""``quantization="fp8"``: fp8 linears in whole models, on tiny random checkpoints in float32 on the CPU.

The reference is transformers with minivllm's fp8 arithmetic written out in plain float32: every projection's
weight quantized per output row and its input per token (``quantize_fp8``, multiplied back), the embedding
and the LM head untouched. Per-token scales make each token's result independent of its batch, so greedy
decoding agrees token for token, as the float32 parity tests do. Against transformers on the fp8 weights
alone (activations unquantized) nothing exact can be asserted: quantizing activations moves each product by
up to 2^-4 of itself, and these random models (weights of std 0.3) amplify that to logits differences of
nats within a few tokens; the quality cost on a real model is measured instead (benchmarks/kv_quality.py).
A compressed-tensors fp8 checkpoint gives exactly the tokens of online quantization of its source weights,
with one rank and two (the scales are each row's whole, whatever the sharding)."""

import json
import os
import shutil

import pytest
import torch
from torch import nn

from minivllm import LLM, SamplingParams
from minivllm.core.interfaces.attention import quantize_fp8
from minivllm.core.quantized_weight import QuantizedWeight
from minivllm.layers.fp8_linear import Fp8Linear
from minivllm.testing.attention import dequantized
from tests.checkpoints import greedy_reference, random_prompts
from tests.conftest import ARCHS
from tests.core.loading.test_gguf_file import write_gguf

SETTINGS = dict(dtype="float32", kvcache_block_size=16, max_model_len=128)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
PROMPTS = random_prompts(3, 4, 30, seed=3)
FP8_SCHEME = {  # what llm-compressor's FP8_DYNAMIC writes
    "quant_method": "compressed-tensors",
    "format": "float-quantized",
    "ignore": ["lm_head"],
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"type": "float", "num_bits": 8, "strategy": "channel", "symmetric": True, "dynamic": False},
            "input_activations": {
                "type": "float",
                "num_bits": 8,
                "strategy": "token",
                "symmetric": True,
                "dynamic": True,
            },
        }
    },
}


def tokens(llm, prompts=PROMPTS) -> list[list[int]]:
    return [out["tokens"] for out in llm.generate(prompts, GREEDY, use_tqdm=False)]


def fp8_layers(llm) -> int:
    return sum(isinstance(m, Fp8Linear) and m.scaled_mm for m in llm.engine.executor.runner.model.modules())


def hf_fp8_greedy(
    path: str, prompts, max_new_tokens: int, ranks: int = 1, quantize_inputs: bool = True
) -> list[list[int]]:
    """transformers' greedy tokens with fp8 projections written out (see the module docstring); with ``ranks``
    the row-parallel projections' (o_proj, down_proj) inputs are quantized per rank's slice, as each rank does;
    without ``quantize_inputs`` only the weights are."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.endswith("proj"):
            module.weight.data = QuantizedWeight.fp8(module.weight.data).dequantize()
            parts = ranks if name.endswith(("o_proj", "down_proj")) else 1
            if quantize_inputs:
                module.register_forward_pre_hook(
                    lambda m, args, parts=parts: (
                        torch.cat([dequantized(*quantize_fp8(x)) for x in args[0].chunk(parts, -1)], -1),
                    )
                )
    return greedy_reference(model, prompts, max_new_tokens)


def write_compressed_tensors(source: str, path: str) -> str:
    """``source`` as llm-compressor's FP8-dynamic writes it: each projection's weight in float8 e4m3 with its
    ``weight_scale`` [out, 1] (float32 here, so that it is exactly online quantization's), the rest as is."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, path)
    for file in [f for f in os.listdir(path) if f.endswith(".safetensors")]:
        tensors = {}
        for name, tensor in load_file(os.path.join(path, file)).items():
            if name.endswith("proj.weight"):
                q = QuantizedWeight.fp8(tensor)
                tensors[name], tensors[name + "_scale"] = q.values, q.scale
            else:
                tensors[name] = tensor
        save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    set_quantization_config(path, FP8_SCHEME)
    return path


def set_quantization_config(path: str, quantization_config: dict) -> None:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = quantization_config
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


@pytest.fixture(scope="module")
def compressed(checkpoints, tmp_path_factory) -> str:
    return write_compressed_tensors(checkpoints["llama"], str(tmp_path_factory.mktemp("ct") / "llama-fp8"))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers_with_fp8_arithmetic(checkpoints, arch):
    """Qwen2's tied embedding and LM head stay in float32; every projection of both layers runs in fp8."""
    llm = LLM(checkpoints[arch], quantization="fp8", **SETTINGS)
    assert fp8_layers(llm) == 2 * 4
    assert tokens(llm) == hf_fp8_greedy(checkpoints[arch], PROMPTS, GREEDY.max_tokens)


def test_compressed_tensors_checkpoint_equals_online_quantization(checkpoints, compressed):
    """With "fp8" the checkpoint runs exactly as online quantization of its float32 source; with "none" it is
    dequantised, and equals transformers on the fp8 weights with unquantized activations."""
    loaded = LLM(compressed, quantization="fp8", **SETTINGS)
    assert fp8_layers(loaded) == 2 * 4
    assert tokens(loaded) == tokens(LLM(checkpoints["llama"], quantization="fp8", **SETTINGS))
    plain = LLM(compressed, **SETTINGS)
    assert fp8_layers(plain) == 0
    assert tokens(plain) == hf_fp8_greedy(checkpoints["llama"], PROMPTS, GREEDY.max_tokens, quantize_inputs=False)


def test_two_ranks(checkpoints, compressed):
    """Column-parallel layers shard rows and their scales, row-parallel ones keep every row's whole scale and
    quantize their slice of the activations: the reference quantizes o_proj's and down_proj's inputs per
    half; the fp8 checkpoint and online quantization agree on two ranks too."""
    with LLM(checkpoints["llama"], quantization="fp8", tensor_parallel_size=2, **SETTINGS) as llm:
        online = tokens(llm)
    assert online == hf_fp8_greedy(checkpoints["llama"], PROMPTS, GREEDY.max_tokens, ranks=2)
    with LLM(compressed, quantization="fp8", tensor_parallel_size=2, **SETTINGS) as llm:
        assert tokens(llm) == online


def test_a_gguf_file_is_quantized_from_its_dequantised_weights(checkpoints, tmp_path):
    """A GGUF file's weights are dequantised as they are read, then quantized like a float checkpoint's: an
    F32 file of the checkpoint gives the checkpoint's fp8 tokens."""
    path = write_gguf(checkpoints["qwen2"], "qwen2", str(tmp_path / "qwen2.gguf"))
    llm = LLM(path, quantization="fp8", **SETTINGS)
    assert fp8_layers(llm) == 2 * 4
    assert tokens(llm) == tokens(LLM(checkpoints["qwen2"], quantization="fp8", **SETTINGS))


def test_dummy_weights_and_the_fp8_kv_cache(llama_path):
    """Random weights (the benchmarks' load_format="dummy") are quantized too, and fp8 weights run over an
    fp8 KV cache."""
    llm = LLM(llama_path, quantization="fp8", load_format="dummy", kv_cache_dtype="fp8", **SETTINGS)
    assert fp8_layers(llm) == 2 * 4
    assert all(len(t) == GREEDY.max_tokens for t in tokens(llm))


@pytest.mark.parametrize(
    "change,error",
    [
        (dict(quant_method="gptq"), "quant_method='gptq' is not supported"),
        (dict(format="pack-quantized"), "format 'pack-quantized' is not supported"),
        (dict(kv_cache_scheme={"type": "float", "num_bits": 8}), "kv_cache_scheme"),
        (dict(config_groups={"g": {"weights": {"type": "int", "num_bits": 4, "strategy": "group"}}}), "weights"),
        (
            dict(
                config_groups={
                    "g": {
                        "weights": FP8_SCHEME["config_groups"]["group_0"]["weights"],
                        "input_activations": {"type": "float", "num_bits": 8, "dynamic": False},
                    }
                }
            ),
            "only dynamic fp8",
        ),
    ],
)
def test_quantizations_it_does_not_run_are_refused(checkpoints, tmp_path, change, error):
    path = str(tmp_path / "ckpt")
    shutil.copytree(checkpoints["llama"], path)
    set_quantization_config(path, {**FP8_SCHEME, **change})
    with pytest.raises(ValueError, match=error):
        LLM(path, **SETTINGS)


def test_unknown_quantization_is_refused(llama_path):
    with pytest.raises(ValueError, match="quantization"):
        LLM(llama_path, quantization="int4", **SETTINGS)
