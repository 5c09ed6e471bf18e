"""What a :class:`~minivllm.core.runner.ModelRunner` is built from, resolved once by the engine.

The engine opens the checkpoint, checks that a model plugin knows its architecture, reads its
:class:`ModelSpec` and settles the effective ``max_model_len`` (the configured one, capped by the model's
positions); the executor hands the one :class:`RunnerSetup` to every rank (pickled to the spawned ones), so
no rank resolves anything again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minivllm.core import plugins
from minivllm.core.config import EngineConfig
from minivllm.core.cpu import cpu_has_bf16
from minivllm.core.loading.checkpoint import Checkpoint
from minivllm.core.model_spec import ModelSpec


@dataclass(frozen=True)
class RunnerSetup:
    config: EngineConfig
    checkpoint: Checkpoint
    spec: ModelSpec
    max_model_len: int  # the effective one: config.max_model_len capped by the model's positions

    @classmethod
    def resolve(cls, config: EngineConfig) -> RunnerSetup:
        checkpoint = Checkpoint.open(config.model, config.revision, config.load_format)
        arch = checkpoint.architecture
        if arch not in plugins.models:
            raise ValueError(f"unsupported architecture {arch!r}; supported: {', '.join(plugins.models.names())}")
        spec = ModelSpec.from_hf_config(checkpoint.hf_config)
        max_model_len = config.effective_max_model_len(spec.max_position_embeddings)
        return cls(config, checkpoint, spec, max_model_len)


def resolve_dtype(config: EngineConfig, checkpoint: Checkpoint, device: torch.device) -> torch.dtype:
    """The configured dtype, or for "auto" the checkpoint's; on the CPU, bfloat16 for bfloat16 and GGUF
    (quantised) checkpoints where the CPU computes it natively (:func:`cpu_has_bf16`), else float32 for
    half-precision ones (half-precision matmuls are slow or missing on many CPUs)."""
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    dtype = checkpoint.dtype
    if device.type != "cpu":
        return dtype
    if (dtype == torch.bfloat16 or checkpoint.load_format == "gguf") and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
