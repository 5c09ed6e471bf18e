"""Building blocks for models, the stable surface model plugins may rely on.

Layers build on :mod:`minivllm.core` (its interfaces and the tensor-parallel handle), never the other way round:
``Attention`` and ``TensorParallel`` live in core, which the runner uses too, and are re-exported here.
"""

from minivllm.core.interfaces.attention import Attention
from minivllm.core.parallel.tensor_parallel import TensorParallel
from minivllm.layers.activation import GeluAndMul, SiluAndMul
from minivllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from minivllm.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from minivllm.layers.loading import default_weight_loader, load_packed_weights
from minivllm.layers.norm import RMSNorm
from minivllm.layers.rotary import RotaryEmbedding

__all__ = [
    "Attention",
    "ColumnParallelLinear",
    "DecoderAttention",
    "DecoderForCausalLM",
    "DecoderLayer",
    "GatedMLP",
    "GeluAndMul",
    "MergedColumnParallelLinear",
    "ParallelLMHead",
    "QKVParallelLinear",
    "RMSNorm",
    "RotaryEmbedding",
    "RowParallelLinear",
    "SiluAndMul",
    "TensorParallel",
    "VocabParallelEmbedding",
    "default_weight_loader",
    "load_packed_weights",
]

# The Llama family's pieces live with the family (minivllm/plugins/models/llama.py); plugins written against
# minivllm.layers still find them here. Imported on first use: the family file builds on these layers, so an
# import at the top would go round a circle.
_LLAMA_FAMILY = ("DecoderAttention", "DecoderForCausalLM", "DecoderLayer", "GatedMLP")


def __getattr__(name: str):
    if name in _LLAMA_FAMILY:
        from minivllm.plugins.models import llama

        return getattr(llama, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
