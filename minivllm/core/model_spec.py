"""What the engine reads of a model, normalised once from its Hugging Face config.

Hugging Face configs omit fields in their own ways: no ``num_key_value_heads`` means one KV head per query
head (multi-head attention); ``head_dim`` is set apart from ``hidden_size // num_attention_heads`` by some
(Qwen3, Gemma) and absent from others. Those rules live here, once. The engine builds a :class:`ModelSpec`
when it opens the checkpoint; the tensor-parallel checks, the runner (the attention backend's shape, the
sampler's vocabulary) and the engine's input checks read it instead of the raw config, and the built-in
models read :func:`head_dim` and :func:`num_kv_heads` (a model still gets the whole config for the rest:
norms, rope, activations).
"""

from __future__ import annotations

from dataclasses import dataclass


def num_kv_heads(hf_config) -> int:
    """The config's ``num_key_value_heads``; where it has none (or None), one per query head."""
    return getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads


def head_dim(hf_config) -> int:
    """The config's ``head_dim`` where it sets one (Qwen3, Gemma), else ``hidden_size // num_attention_heads``."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


@dataclass(frozen=True)
class ModelSpec:
    num_heads: int  # query heads, the whole model's
    num_kv_heads: int  # key/value heads, the whole model's (fewer than num_heads: grouped-query attention)
    head_dim: int
    vocab_size: int
    max_position_embeddings: int | None  # None where the config sets no limit
    intermediate_size: int | None  # the MLP's width; None for an architecture without the field

    @classmethod
    def from_hf_config(cls, hf_config) -> ModelSpec:
        return cls(
            num_heads=hf_config.num_attention_heads,
            num_kv_heads=num_kv_heads(hf_config),
            head_dim=head_dim(hf_config),
            vocab_size=hf_config.vocab_size,
            max_position_embeddings=getattr(hf_config, "max_position_embeddings", None),
            intermediate_size=getattr(hf_config, "intermediate_size", None),
        )

    def check_tensor_parallel(self, tp: int) -> None:
        """Raise ValueError if the model cannot be split over ``tp`` ranks (query heads, KV heads as
        :meth:`~minivllm.core.parallel.tensor_parallel.TensorParallel.shard_kv_heads` splits them, MLP)."""
        if self.num_heads % tp:
            raise ValueError(f"tensor_parallel_size={tp} does not divide the model's {self.num_heads} attention heads")
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise ValueError(
                f"tensor_parallel_size={tp} neither divides nor is a multiple of the model's "
                f"{self.num_kv_heads} key/value heads"
            )
        if self.intermediate_size and self.intermediate_size % tp:
            raise ValueError(
                f"tensor_parallel_size={tp} does not divide the model's intermediate_size={self.intermediate_size}"
            )
