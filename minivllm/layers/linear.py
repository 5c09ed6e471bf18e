"""Linear layers that shard over tensor-parallel ranks (Megatron style).

Every parameter carries a ``weight_loader(param, full_tensor, shard_id=None)`` that copies this rank's
slice of a full checkpoint tensor, so weights are sharded as they are read. A checkpoint weight may come
quantized (a ``QuantizedWeight``: GGUF blocks with ``quantization="gguf"``, a compressed-tensors fp8 weight
with ``quantization="fp8"``): the layer then keeps it so, and ``pack_weights`` hands it to its kernel (see
quantized_linear.py and fp8_linear.py). With ``quantization="fp8"`` a floating-point weight is quantized
whole as it arrives, before it is sharded, so that its scales are those of TP=1 and of an fp8 checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minivllm.core.parallel.tensor_parallel import TensorParallel
from minivllm.core.quantized_weight import QuantizedWeight
from minivllm.layers import cpu_linear
from minivllm.layers.fp8_linear import Fp8Linear
from minivllm.layers.quantized_linear import PackedQuantizedLinear


class _Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.weight.weight_loader = self._load_weight
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        self.packed: torch.Tensor | None = None  # oneDNN's layout of the weight (on the CPU)
        self.staged: QuantizedWeight | None = None  # the weight as loaded quantized, until pack_weights
        self.quantized: PackedQuantizedLinear | Fp8Linear | None = None
        self._plain = False  # whether the weight got a part in floating point (then it all stays so)
        self.fp8 = False  # see use_fp8

    def use_fp8(self) -> None:
        """Called by the runner before loading, with ``quantization="fp8"``: the weight is kept in fp8
        (quantized as it is loaded, if the checkpoint's is in floating point) and runs in fp8_linear.py."""
        self.fp8 = True

    def _load_weight(self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, *shard_id) -> None:
        if isinstance(loaded, QuantizedWeight):  # kept on the layer's device (a compressed-tensors one on CUDA)
            loaded = loaded.map_rows(lambda t: t.to(param.device))
        elif self.fp8:
            loaded = QuantizedWeight.fp8(loaded.to(param.device))  # the whole tensor: each row's own scale
        self.weight_loader(param, loaded, *shard_id)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        self._store(param, loaded)

    def _store(self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, offset: int = 0) -> None:
        """Write this rank's part ``loaded`` into ``param`` from row ``offset``. Quantized parts of one kind
        are kept quantized; a weight whose parts are mixed is dequantised whole."""
        if (
            param is self.weight
            and isinstance(loaded, QuantizedWeight)
            and not self._plain
            and (self.staged is None or self.staged.kind == loaded.kind)
        ):
            self.staged = self.staged or loaded.empty_rows(param.shape[0])
            self.staged.copy_rows_(offset, loaded)
            return
        if param is self.weight:
            if self.staged is not None:
                param.data.copy_(self.staged.dequantize(param.dtype))
                self.staged = None
            self._plain = True
        if isinstance(loaded, QuantizedWeight):
            loaded = loaded.dequantize(param.dtype)
        param.data.narrow(0, offset, loaded.shape[0]).copy_(loaded)

    def pack_weights(self) -> None:
        """Called by the runner once weights are loaded, on the CPU and with a quantized weight: keep only
        the weight in its kernel's layout: the quantized one (see quantized_linear.py, fp8_linear.py),
        else oneDNN's packed copy (see cpu_linear.py)."""
        if self.fp8 and self.staged is None:  # a weight written in place (load_format="dummy"): quantized now
            self.staged = QuantizedWeight.fp8(self.weight.data)
        if self.staged is not None:
            kernel = Fp8Linear if self.staged.kind == "fp8" else PackedQuantizedLinear
            self.quantized = kernel(self.staged, self.weight.dtype)
            self.staged = None
            self.weight.data = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device)
        elif cpu_linear.can_pack(self.weight):
            self.packed = cpu_linear.pack(self.weight.data)
            self.weight.data = torch.empty(0, dtype=self.weight.dtype)

    def _linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quantized is not None:
            return self.quantized(x, bias)
        if self.packed is not None:
            return cpu_linear.packed_linear(x, self.packed, bias)
        return F.linear(x, self.weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x, self.bias)


class ColumnParallelLinear(_Linear):
    """Splits the output features: each rank computes its slice; no communication."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TensorParallel = TensorParallel()):
        super().__init__(in_features, tp.shard(out_features, "output features"), bias, tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        size = param.shape[0]
        self._store(param, loaded.narrow(0, self.tp.rank * size, size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input in one matmul (e.g. gate and up);
    ``shard_id`` is the index of the part a checkpoint tensor belongs to."""

    def __init__(
        self, in_features: int, out_sizes: list[int], bias: bool = False, tp: TensorParallel = TensorParallel()
    ):
        self.out_sizes = [tp.shard(s, "output features") for s in out_sizes]
        super().__init__(in_features, sum(out_sizes), bias, tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        size = self.out_sizes[shard_id]
        offset = sum(self.out_sizes[:shard_id])
        self._store(param, loaded.narrow(0, self.tp.rank * size, size), offset)


class QKVParallelLinear(ColumnParallelLinear):
    """Packed q/k/v projection. Query heads are split across ranks; KV heads as
    :meth:`TensorParallel.shard_kv_heads` says (split, or replicated when there are fewer than ranks)."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        tp: TensorParallel = TensorParallel(),
    ):
        self.head_dim = head_dim
        self.num_heads = tp.shard(num_heads, "num_attention_heads")
        self.num_kv_heads, self.kv_head_offset = tp.shard_kv_heads(num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim
        _Linear.__init__(self, hidden_size, out, bias, tp)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        q, kv, _ = self.sizes
        if shard_id == "q":
            offset, size, start = 0, q, self.tp.rank * q
        else:
            offset = q if shard_id == "k" else q + kv
            size, start = kv, self.kv_head_offset * self.head_dim
        self._store(param, loaded.narrow(0, start, size), offset)


class RowParallelLinear(_Linear):
    """Splits the input features: each rank multiplies its slice, then the partial sums are all-reduced.
    The bias is added once, after the reduction."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TensorParallel = TensorParallel()):
        super().__init__(tp.shard(in_features, "input features"), out_features, bias, tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 1:  # bias: replicated
            param.data.copy_(loaded)
            return
        size = param.shape[1]
        self._store(param, loaded.narrow(1, self.tp.rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(self._linear(x, None))
        return y if self.bias is None else y + self.bias
