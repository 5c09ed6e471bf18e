"""Tensor-parallel group handle passed to every layer (size 1: no communication).

``group`` is a c10d process group or backend (e.g. ``ProcessGroupGloo``); its own collective methods are
called, so a group built privately for one engine works without ``init_process_group``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    group: Any = None  # a torch.distributed process group when size > 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            self.group.allreduce([x]).wait()
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenate every rank's ``x`` along ``dim``, in rank order."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self.group.allgather([parts], [x.contiguous()]).wait()
        return torch.cat(parts, dim=dim)

    def shard(self, n: int, what: str) -> int:
        """This rank's share of ``n`` items that are split evenly."""
        if n % self.size:
            raise ValueError(f"{what}={n} is not divisible by tensor_parallel_size={self.size}")
        return n // self.size

    def shard_kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """(how many of the model's ``num_kv_heads`` key/value heads this rank holds, the first one's index).
        Split evenly when there are at least as many as ranks; otherwise replicated, one per rank: each rank
        keeps the KV head its query heads use (``size`` must then be a multiple of ``num_kv_heads``)."""
        if num_kv_heads >= self.size:
            per_rank = self.shard(num_kv_heads, "num_key_value_heads")
            return per_rank, self.rank * per_rank
        if self.size % num_kv_heads:
            raise ValueError(
                f"tensor_parallel_size={self.size} is not a multiple of num_key_value_heads={num_kv_heads}"
            )
        return 1, self.rank * num_kv_heads // self.size
