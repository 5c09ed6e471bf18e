"""Checkpoints already quantized to fp8, in compressed-tensors' ``float-quantized`` format: what
llm-compressor's FP8-dynamic (and FP8) schemes write, the common fp8 format on the Hugging Face hub.

Their ``config.json`` has ``quantization_config`` with ``quant_method: "compressed-tensors"``; each quantized
linear's ``X.weight`` is float8 e4m3 [out, in] beside ``X.weight_scale`` [out, 1] (strategy "channel") or
[1] ("tensor"), and the input activations are quantized per token as they come (``dynamic``), which is what
``layers/fp8_linear.py`` does. :func:`fp8_scheme` checks the config when the checkpoint is opened, refusing
what minivllm does not run (other methods, integer or static-scale schemes, fp8 KV-cache scales);
:func:`fp8_weights` pairs each weight with its scale as the tensors are read: a ``QuantizedWeight`` with
``quantization="fp8"``, else the weight dequantised into the model's dtype (the reference path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from minivllm.core.interfaces.attention import FP8_DTYPE
from minivllm.core.quantized_weight import QuantizedWeight

SCALE = "_scale"  # X.weight's scale is X.weight_scale


def fp8_scheme(hf_config) -> bool:
    """Whether the checkpoint's linear weights come in fp8: False without a ``quantization_config``, True
    for a compressed-tensors fp8 one; a ValueError naming the setting for anything else."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        return False
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    method = qc.get("quant_method")
    if method != "compressed-tensors":
        raise ValueError(
            f"the checkpoint's quantization_config.quant_method={method!r} is not supported: "
            "minivllm reads 'compressed-tensors' fp8 checkpoints (llm-compressor's FP8-dynamic)"
        )
    if qc.get("format") != "float-quantized":
        raise ValueError(
            f"compressed-tensors format {qc.get('format')!r} is not supported: only 'float-quantized' (fp8 weights)"
        )
    if qc.get("kv_cache_scheme"):
        raise ValueError(
            "compressed-tensors kv_cache_scheme (static KV-cache scales) is not supported: "
            "kv_cache_dtype='fp8' computes the scales as tokens are stored"
        )
    for name, group in (qc.get("config_groups") or {}).items():
        weights, inputs = group.get("weights") or {}, group.get("input_activations")
        if (weights.get("type"), weights.get("num_bits"), weights.get("strategy")) not in (
            ("float", 8, "channel"),
            ("float", 8, "tensor"),
        ):
            raise ValueError(
                f"compressed-tensors group {name!r}: weights {weights} are not supported: only fp8 "
                "(type 'float', num_bits 8) with a 'channel' or 'tensor' scale"
            )
        if inputs is not None and not (inputs.get("dynamic") is True and inputs.get("type") == "float"):
            raise ValueError(
                f"compressed-tensors group {name!r}: input_activations {inputs} are not supported: "
                "only dynamic fp8 (scales computed per token at run time)"
            )
    return True


def fp8_weights(
    names: list[str], read: Callable[[str], torch.Tensor], keep: bool, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """(name, tensor) for the checkpoint tensors ``names`` (``read(name)`` loads one): each fp8 ``X.weight``
    with its ``X.weight_scale`` as a :class:`QuantizedWeight` when ``keep``, else dequantised to ``dtype``;
    the scales themselves are not yielded."""
    present = set(names)
    for name in names:
        if name.endswith("weight" + SCALE) and name.removesuffix(SCALE) in present:
            continue
        tensor = read(name)
        if name + SCALE in present:
            if tensor.dtype != FP8_DTYPE:
                raise ValueError(f"{name} has a weight_scale but is {tensor.dtype}, not float8_e4m3fn")
            rows = tensor.shape[0]
            scale = read(name + SCALE).float().reshape(-1, 1).expand(rows, 1).contiguous()  # "tensor": one for all
            weight = QuantizedWeight(tensor, scale, None)
            tensor = weight if keep else weight.dequantize(dtype)
        yield name, tensor
