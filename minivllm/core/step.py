"""What one step returns to the engine: each sampled sequence's token and logprobs, keyed by sequence.

The runner queues a step's work on the device and hands back a :class:`StepFuture` at once; the
sampled tokens travel to the host by themselves (a non-blocking copy into pinned memory) while the host
plans the next step, and :meth:`StepFuture.result` waits only for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from minivllm.core.interfaces.sampler import TokenLogprobs
from minivllm.core.sampling import DeviceLogprobs


class SampledToken(NamedTuple):
    token: int
    logprobs: TokenLogprobs | None  # when the request asked for logprobs


@dataclass
class StepOutput:
    sampled: dict[int, SampledToken]  # seq_id -> what that sequence sampled; sequences that sampled nothing are absent


class StepFuture:
    """A submitted step; :meth:`result` blocks until its tokens are on the host."""

    def __init__(self, seq_ids: list[int], tokens: torch.Tensor | None = None, logprobs: DeviceLogprobs | None = None):
        self.seq_ids = seq_ids
        self._tokens, self._logprobs, self._ready = tokens, logprobs, None
        if tokens is not None and tokens.is_cuda:
            self._tokens = _to_host(tokens)
            if logprobs is not None:
                self._logprobs = logprobs.map(_to_host)
            self._ready = torch.cuda.Event()
            self._ready.record()

    def result(self) -> StepOutput:
        if not self.seq_ids:
            return StepOutput({})
        if self._ready is not None:
            self._ready.synchronize()
        tokens = self._tokens.tolist()
        logprobs = self._logprobs.per_row(len(tokens)) if self._logprobs is not None else [None] * len(tokens)
        return StepOutput({sid: SampledToken(t, lp) for sid, t, lp in zip(self.seq_ids, tokens, logprobs)})


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """Start copying a device tensor into pinned host memory; valid once the stream reaches this point."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
