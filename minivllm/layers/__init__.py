"""Building blocks for models, the stable surface model plugins may rely on."""

from minivllm.layers.activation import GeluAndMul, SiluAndMul
from minivllm.layers.attention import Attention
from minivllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from minivllm.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from minivllm.layers.loading import default_weight_loader, load_packed_weights
from minivllm.layers.norm import RMSNorm
from minivllm.layers.parallel import TensorParallel
from minivllm.layers.rotary import RotaryEmbedding

__all__ = [
    "Attention",
    "ColumnParallelLinear",
    "GeluAndMul",
    "MergedColumnParallelLinear",
    "ParallelLMHead",
    "QKVParallelLinear",
    "RMSNorm",
    "ReplicatedLinear",
    "RotaryEmbedding",
    "RowParallelLinear",
    "SiluAndMul",
    "TensorParallel",
    "VocabParallelEmbedding",
    "default_weight_loader",
    "load_packed_weights",
]
