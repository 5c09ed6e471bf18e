"""Samplers: turn a batch of logits into next tokens, on the device."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from minivllm.core.sampling_params import SamplingParams


class Sampler(ABC):
    """Called by the model runner once per step with the logits of the sequences that sample."""

    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0):
        self.vocab_size = vocab_size
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @abstractmethod
    def sample(
        self,
        logits: torch.Tensor,  # [B, vocab_size] float32
        params: list[SamplingParams],  # one per row
        steps: list[int],  # per row: how many tokens the sequence generated so far (seeds the per-request RNG)
    ) -> torch.Tensor:  # [B] int64, still on the device
        """Sample one token per row. Must not synchronise with the host per row."""
