"""The five plugin interfaces. The engine talks to plugins only through these."""

from minivllm.core.interfaces.attention import Attention, AttentionBackend, AttentionMetadata, KVScales, quantize_fp8
from minivllm.core.interfaces.kv_allocator import KVAllocator
from minivllm.core.interfaces.model import Model, ModelContext
from minivllm.core.interfaces.options import PluginOptions
from minivllm.core.interfaces.sampler import Sampler, SamplingBatch, TokenLogprobs, row_seed
from minivllm.core.interfaces.scheduler import ScheduledBatch, Scheduler, SchedulerConfig

__all__ = [
    "Attention",
    "AttentionBackend",
    "AttentionMetadata",
    "KVAllocator",
    "KVScales",
    "Model",
    "ModelContext",
    "PluginOptions",
    "Sampler",
    "SamplingBatch",
    "ScheduledBatch",
    "Scheduler",
    "SchedulerConfig",
    "TokenLogprobs",
    "quantize_fp8",
    "row_seed",
]
