"""Copy checkpoint tensors into a model's (possibly packed and sharded) parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from minivllm.core.quantized_weight import QuantizedWeight


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint {tuple(loaded.shape)}")
    if isinstance(loaded, QuantizedWeight):  # a parameter of no quantizing layer: its floating-point value
        loaded = loaded.dequantize(param.dtype)
    param.data.copy_(loaded)


def load_packed_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    packed: dict[str, tuple[str, object]] | None = None,
    ignore: tuple[str, ...] = (),
) -> None:
    """Load (name, tensor) pairs. ``packed`` maps a checkpoint name part to the packed parameter part
    and shard id, e.g. ``{"q_proj": ("qkv_proj", "q")}``. Names containing a string of ``ignore`` are
    skipped. Raises if a checkpoint tensor has no parameter, or a parameter got no tensor."""
    packed = packed or {}
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        if any(part in name for part in ignore):
            continue
        shard_id = None
        for src, (dst, shard) in packed.items():
            if f".{src}." in name:
                name, shard_id = name.replace(f".{src}.", f".{dst}."), shard
                break
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of {type(model).__name__}")
        param = params[name]
        loader = getattr(param, "weight_loader", default_weight_loader)
        if shard_id is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        more = " ..." if len(missing) > 8 else ""
        raise ValueError(f"the checkpoint lacks weights for: {', '.join(missing[:8])}{more}")
