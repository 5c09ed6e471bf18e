"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary.

With ``quantization="gguf"`` the table may come quantized (a ``QuantizedWeight``): it is kept so, on the
parameter as ``weight.quantized`` (so a tied LM head shares it), the lookup dequantises only the rows it
gathers, and the LM head runs the quantized kernel (quantized_linear.py). An fp8 table (a compressed-tensors
checkpoint's) is dequantised: with ``quantization="fp8"`` the embedding and the LM head stay in the model's dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minivllm.core.parallel.tensor_parallel import TensorParallel
from minivllm.core.quantized_weight import QuantizedWeight
from minivllm.core.utils import cdiv
from minivllm.layers import cpu_linear
from minivllm.layers.quantized_linear import PackedQuantizedLinear


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel = TensorParallel()):
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.shard_size = cdiv(vocab_size, tp.size)  # the last shard may be padded
        self.vocab_start = tp.rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id=None) -> None:
        part = loaded.narrow(0, self.vocab_start, min(self.shard_size, loaded.shape[0] - self.vocab_start))
        if isinstance(part, QuantizedWeight) and part.kind == "fp8":
            part = part.dequantize(param.dtype)
        if isinstance(part, QuantizedWeight):  # the padding rows stay zero; the parameter stays unwritten
            param.quantized = part.empty_rows(self.shard_size)
            param.quantized.copy_rows_(0, part)
            return
        param.data[: part.shape[0]].copy_(part)
        param.data[part.shape[0] :].zero_()

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        quantized = getattr(self.weight, "quantized", None)
        if quantized is None:
            return F.embedding(ids, self.weight)
        return quantized.map_rows(lambda t: t[ids]).dequantize(self.weight.dtype)  # ids: 1-D

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return self._lookup(input_ids)
        local = input_ids - self.vocab_start
        mine = (local >= 0) & (local < self.shard_size)
        out = self._lookup(local.clamp(0, self.shard_size - 1)) * mine.unsqueeze(-1)
        return self.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to logits; with ``tie`` it shares the embedding's weight."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        tp: TensorParallel = TensorParallel(),
        tie: VocabParallelEmbedding | None = None,
    ):
        super().__init__(vocab_size, hidden_size, tp)
        if tie is not None:
            self.weight = tie.weight
        self.packed: torch.Tensor | None = None  # oneDNN's layout of the weight (on the CPU)
        self.quantized: PackedQuantizedLinear | None = None

    def pack_weights(self) -> None:
        """Called by the runner once weights are loaded, on the CPU: the quantized kernel's layout of a
        quantized weight (see quantized_linear.py), else an added oneDNN packed copy of the weight (the
        embedding lookup keeps the plain one; see cpu_linear.py)."""
        if (quantized := getattr(self.weight, "quantized", None)) is not None:
            self.quantized = PackedQuantizedLinear(quantized, self.weight.dtype)
        elif cpu_linear.can_pack(self.weight):
            self.packed = cpu_linear.pack(self.weight.data)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            logits = self.quantized(hidden_states, None)  # [n, shard_size]
        elif self.packed is not None:
            logits = cpu_linear.packed_linear(hidden_states, self.packed, None)  # [n, shard_size]
        else:
            logits = F.linear(hidden_states, self.weight)  # [n, shard_size]
        return self.tp.all_gather(logits, dim=-1)[:, : self.vocab_size]
