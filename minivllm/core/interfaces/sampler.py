"""Samplers: turn a batch of logits into next tokens, on the device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence

# one generated token's log-probabilities: (the sampled token's, [(token id, logprob)] of the top k)
TokenLogprobs = tuple[float, list[tuple[int, float]]]


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64, still on the device
    logprobs: list[TokenLogprobs | None] | None = None  # per row (None where params.logprobs is None)


class Sampler(ABC):
    """Called by the model runner once per step, through :meth:`sample_sequences`, with the logits of the
    sequences that sample."""

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

    def sample_sequences(
        self,
        logits: torch.Tensor,  # [B, vocab_size] float32
        seqs: list[Sequence],  # one per row: params, prompt and output tokens, stop_token_ids
    ) -> SamplerOutput:
        """What the runner calls. Samplers that honour the token-history settings (penalties,
        ``min_tokens``) or return ``logprobs`` override this; the default ignores them and calls
        :meth:`sample`."""
        params = [seq.params for seq in seqs]
        return SamplerOutput(self.sample(logits, params, [seq.num_output_tokens for seq in seqs]))
