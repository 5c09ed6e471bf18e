"""The engine configuration: validated once, with errors that name the problem."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minivllm.core import plugins
from minivllm.core.interfaces.scheduler import Scheduler, SchedulerConfig
from minivllm.core.loading.default_model import default_model
from minivllm.core.loading.model_source import looks_like_hub_id

# vLLM's spellings of a dtype, accepted as it accepts them (`--dtype half`)
DTYPE_ALIASES = {"half": "float16", "float": "float32"}


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default_factory=default_model,
        description="a checkpoint directory, a .gguf file, or a Hugging Face hub id (Org/name); "
        "default: the embedded SmolLM2-135M-Instruct (minivllm.default_model())",
    )
    revision: str | None = Field(
        None, description="the hub revision (branch, tag or commit) of a hub id; default: main"
    )
    tokenizer: str | None = Field(None, description="tokenizer directory; default: the model's")
    max_num_seqs: int = Field(512, ge=1)
    max_num_batched_tokens: int = Field(16384, ge=1)
    max_model_len: int = Field(4096, ge=2)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1, le=8)
    enforce_eager: bool = False
    async_scheduling: bool | None = Field(
        None, description="plan the next step while the device runs this one (None: on with CUDA, off on the CPU)"
    )
    kvcache_block_size: int = Field(256, ge=1)
    num_kvcache_blocks: int = Field(-1, description="-1 sizes the cache from memory; otherwise a block count")
    cpu_kvcache_space_gib: float = Field(4.0, gt=0.0, description="KV cache budget when running on the CPU")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cpu_weight_prepack: bool = Field(True, description="on the CPU: linears from oneDNN-packed weights")
    quantization: Literal["none", "gguf", "fp8"] = Field(
        "none",
        description="on the CPU: 'gguf' keeps a GGUF file's 4- and 8-bit linear weights quantized "
        "(faster for a few streams); 'fp8' (for the GPU): the linears' weights in float8 "
        "e4m3 with a scale per output channel, activations quantized per token, from a "
        "floating-point checkpoint (or GGUF file) or a compressed-tensors fp8 one; 'none' "
        "runs every weight in the model's dtype (dequantising GGUF and fp8 checkpoints)",
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="'auto': the model's dtype; 'fp8': float8 e4m3 with a scale per token and KV head"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    enable_prefix_caching: bool = True
    load_format: Literal["auto", "safetensors", "gguf", "dummy"] = "auto"
    attention_backend: str = "auto"
    scheduler: str = "fcfs"
    scheduler_options: dict[str, Any] = Field(
        default_factory=dict, description="the scheduler's own settings, a JSON object on the command line"
    )
    kv_allocator: str = "prefix_cache"
    sampler: str = "default"

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: str) -> str:
        # a hub id is resolved (cache or download) when the engine opens the checkpoint: see model_source.py
        if not os.path.exists(v) and not looks_like_hub_id(v):
            raise ValueError(f"model path {v!r} does not exist, and it is not a Hugging Face hub id (Org/name)")
        return v

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, v):
        return DTYPE_ALIASES.get(v, v)

    @field_validator("scheduler_options", mode="before")
    @classmethod
    def _json_object(cls, v):
        return json.loads(v) if isinstance(v, str) else v  # as the command line and `bench --set` give it

    @field_validator("num_kvcache_blocks")
    @classmethod
    def _num_blocks(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("num_kvcache_blocks must be -1 (size from memory) or at least 1")
        return v

    @model_validator(mode="after")
    def _plugins_exist(self) -> EngineConfig:
        plugins.load_plugins()
        if self.attention_backend != "auto":
            plugins.attention_backends.check(self.attention_backend)
        plugins.schedulers.check(self.scheduler)
        plugins.schedulers.options(self.scheduler, self.scheduler_options)
        plugins.kv_allocators.check(self.kv_allocator)
        plugins.samplers.check(self.sampler)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available here")
        if self.quantization == "gguf" and self.torch_device.type != "cpu":
            raise ValueError("quantization='gguf' runs on the CPU only (device='cpu')")
        backend = plugins.attention_backends.get(self.resolved_attention_backend)
        backend.check_block_size(self.kvcache_block_size)
        backend.check_kv_cache_dtype(self.kv_cache_dtype)
        return self

    def effective_max_model_len(self, max_position_embeddings: int | None) -> int:
        """The context length the engine runs with. The default (4096) is capped at the model's
        ``max_position_embeddings``; a ``max_model_len`` given above it is refused, as vLLM does, rather than
        silently cut."""
        if max_position_embeddings is None or self.max_model_len <= max_position_embeddings:
            return self.max_model_len
        if "max_model_len" in self.model_fields_set:
            raise ValueError(
                f"max_model_len={self.max_model_len} is more than the model's context "
                f"(max_position_embeddings={max_position_embeddings}): give at most that"
            )
        return max_position_embeddings

    def scheduler_config(self, max_model_len: int) -> SchedulerConfig:
        """The scheduler's settings, with the effective ``max_model_len`` (the model may cap the config's)."""
        return SchedulerConfig(self.max_num_seqs, self.max_num_batched_tokens, max_model_len, self.scheduler_options)

    def build_scheduler(self, max_model_len: int, num_blocks: int) -> Scheduler:
        """The scheduler plugin the config names, over a new KV allocator of ``num_blocks`` (its
        ``allocator``): the engine's, and a server API process's copy, which only checks requests."""
        allocator = plugins.kv_allocators.get(self.kv_allocator)(
            num_blocks, self.kvcache_block_size, self.enable_prefix_caching
        )
        return plugins.schedulers.get(self.scheduler)(self.scheduler_config(max_model_len), allocator)

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def resolved_async_scheduling(self) -> bool:
        """Overlap pays where the device runs apart from the host; on the CPU it would only delay stops."""
        if self.async_scheduling is not None:
            return self.async_scheduling
        return self.torch_device.type == "cuda"

    @property
    def resolved_attention_backend(self) -> str:
        """The backend name: the configured one, or for "auto" the first of the preferred that is available
        and takes ``kvcache_block_size`` and ``kv_cache_dtype``: triton then torch on CUDA, cpu then torch on the
        CPU. Only backends that passed the conformance kit on the device are preferred (flash_attn has not run on
        a GPU yet: it is chosen only by name)."""
        if self.attention_backend != "auto":
            return self.attention_backend
        device = self.torch_device
        preferred = ("triton", "torch") if device.type == "cuda" else ("cpu", "torch")
        refused = []
        for name in filter(plugins.attention_backends.__contains__, preferred):
            backend = plugins.attention_backends.get(name)
            if not backend.is_available(device):
                refused.append(f"{name} is not available")
            elif not backend.supports_block_size(self.kvcache_block_size):
                refused.append(f"{name} needs a multiple of {backend.block_size_multiple}")
            elif self.kv_cache_dtype not in backend.kv_cache_dtypes:
                refused.append(f"{name} does not take kv_cache_dtype={self.kv_cache_dtype!r}")
            else:
                return name
        raise ValueError(
            f"no attention backend takes kvcache_block_size={self.kvcache_block_size} on {device}: "
            + "; ".join(refused or ["none of " + ", ".join(preferred) + " is registered"])
        )
