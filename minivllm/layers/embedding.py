"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minivllm.core.parallel.tensor_parallel import TensorParallel
from minivllm.core.utils import cdiv
from minivllm.layers import cpu_linear


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel = TensorParallel()):
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.shard_size = cdiv(vocab_size, tp.size)  # the last shard may be padded
        self.vocab_start = tp.rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        part = loaded[self.vocab_start : self.vocab_start + self.shard_size]
        param.data[: part.shape[0]].copy_(part)
        param.data[part.shape[0] :].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mine = (local >= 0) & (local < self.shard_size)
        out = F.embedding(local.clamp(0, self.shard_size - 1), self.weight) * mine.unsqueeze(-1)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to logits; with ``tie`` it shares the embedding's weight."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel = TensorParallel(),
                 tie: VocabParallelEmbedding | None = None):
        super().__init__(vocab_size, hidden_size, tp)
        if tie is not None:
            self.weight = tie.weight
        self.packed: torch.Tensor | None = None  # oneDNN's layout of the weight (on the CPU)

    def pack_weights(self) -> None:
        """Called by the runner once weights are loaded, on the CPU: add oneDNN's packed copy
        of the weight (the embedding lookup keeps the plain one; see cpu_linear.py)."""
        if cpu_linear.can_pack(self.weight):
            self.packed = cpu_linear.pack(self.weight.data)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            logits = cpu_linear.packed_linear(hidden_states, self.packed, None)  # [n, shard_size]
        else:
            logits = F.linear(hidden_states, self.weight)  # [n, shard_size]
        return self.tp.all_gather(logits, dim=-1)[:, : self.vocab_size]
