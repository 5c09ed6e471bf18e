"""Models: a decoder-only network over a flat batch of tokens.

``minivllm check-plugin model ARCHITECTURE`` checks a model's greedy tokens against transformers', on one
rank and two (:mod:`minivllm.testing.model`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from minivllm.core.interfaces.attention import AttentionBackend, AttentionMetadata
from minivllm.core.parallel.tensor_parallel import TensorParallel


@dataclass
class ModelContext:
    """What the runner hands a model's constructor besides the Hugging Face config."""

    attn_backend: AttentionBackend
    tp: TensorParallel = field(default_factory=TensorParallel)
    max_model_len: int = 4096


class Model(nn.Module, ABC):
    """A causal LM built from :mod:`minivllm.layers`. The runner builds it on the target device and dtype,
    loads its weights through :meth:`load_weights`, then calls :meth:`forward` and
    :meth:`compute_logits` every step."""

    def __init__(self, config, ctx: ModelContext):
        super().__init__()
        self.config = config
        self.ctx = ctx

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, hidden_size]
        """Run the decoder over the step's new tokens (see :class:`AttentionMetadata`)."""

    @abstractmethod
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[n, hidden_size] -> [n, vocab_size] logits, gathered over tensor-parallel ranks."""

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Called once by the runner with (Hugging Face name, full tensor) pairs; shards as it copies."""
