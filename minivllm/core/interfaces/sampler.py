"""Samplers: pick each row's next token from its logits, on the device.

A sampler only picks tokens. Everything else a request asks for is the core's (``core/sampling.py``),
applied the same way whatever sampler runs: the repetition / presence / frequency penalties and the
``min_tokens`` ban on stop tokens change the logits before :meth:`Sampler.sample` sees them, and
``logprobs`` are computed from the raw logits afterwards. A sampler honours temperature (0 = greedy),
top-k, top-p, min-p and per-request seeds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from minivllm.core.sampling_params import SamplingParams

_MASK64 = 2**64 - 1


def row_seed(seed: int, step: int) -> int:
    """The random key of a seeded row at one step: splitmix64 of (seed, step), 63 bits. Every bit of a 64-bit
    seed moves every bit of the key, so seeds that differ only above bit 31 (5 and 5 + 2**32) draw different
    noise even from a generator that keeps 32 bits of its seed (``torch.Generator`` on the CPU)."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & (2**63 - 1)


# one generated token's log-probabilities: (the sampled token's, [(token id, logprob)] of the top k)
TokenLogprobs = tuple[float, list[tuple[int, float]]]


@dataclass
class SamplingBatch:
    """The rows that sample this step, as the runner hands them to :meth:`Sampler.sample`."""

    params: list[SamplingParams]  # one per row
    # per row: tokens the sequence generated before this one; with ``seed`` it keys the row's own noise,
    # so a seeded request's tokens do not depend on what it is batched with
    steps: list[int]
    vocab_size: int

    def __len__(self) -> int:
        return len(self.params)

    @property
    def all_greedy(self) -> bool:
        return all(p.greedy for p in self.params)

    def top_k(self) -> list[int]:
        """Per row: its top-k, or ``vocab_size`` where top-k is off (greedy rows count as off)."""
        vocab = self.vocab_size
        return [p.top_k if 0 < p.top_k < vocab and not p.greedy else vocab for p in self.params]


class Sampler(ABC):
    """Called by the model runner once per step with the logits of the rows that sample. One instance
    per runner (per rank with tensor parallelism: every rank samples the same rows alike)."""

    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0):
        self.vocab_size = vocab_size
        self.device = device
        # the shared random state of rows without a seed (engine-wide ``seed``)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @abstractmethod
    def sample(
        self,
        logits: torch.Tensor,  # [B, vocab_size]: float32, or the model's dtype when the core changed nothing
        batch: SamplingBatch,  # one row per logits row
    ) -> torch.Tensor:  # [B] int64, still on the device
        """Sample one token per row. Must not synchronise with the host (the engine plans the next step
        while this one runs), nor change ``logits`` in place."""
