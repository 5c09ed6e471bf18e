"""Batched sampling on the device, the reference: greedy, temperature, top-k, top-p, min-p (one sort of
the vocabulary per row) and per-request seeds.

Sampling uses the exponential-race trick: argmax(p / e) with e ~ Exp(1) draws from p. Rows with a
seed draw their noise from a generator seeded by (seed, step), so a seeded request's tokens do not
depend on what it is batched with; the rest share the engine's generator. No host sync per row.
"""

from __future__ import annotations

import torch

from minivllm.core.interfaces import Sampler, SamplingBatch, row_seed
from minivllm.core.sampling import to_device


def apply_top_k_top_p_min_p(logits, top_k, top_p, min_p):
    """Mask (to -inf) the logits outside each row's top-k / top-p nucleus / min-p threshold.
    logits [B, V] float32; top_k [B] int64 (V = off); top_p [B] float; min_p [B] float."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    remove = ranks[None, :] >= top_k[:, None]
    probs = sorted_logits.softmax(dim=-1)
    # drop a token once the mass before it already reaches top_p (the first token always stays)
    remove |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    remove |= probs < min_p[:, None] * probs[:, :1]
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def exponential_noise(shape, batch: SamplingBatch, generator, device) -> torch.Tensor:
    """Exp(1) noise [B, n]: rows with a seed from a generator seeded by (seed, step), the rest from
    ``generator``."""
    noise = torch.empty(shape, device=device).exponential_(generator=generator)
    for row, (p, step) in enumerate(zip(batch.params, batch.steps)):
        if p.seed is not None and not p.greedy:
            g = torch.Generator(device=device)
            g.manual_seed(row_seed(p.seed, step))
            noise[row].exponential_(generator=g)
    return noise


class DefaultSampler(Sampler):
    def sample(self, logits, batch):
        logits = logits.float()
        if batch.all_greedy:
            return logits.argmax(dim=-1)
        params = batch.params
        device = logits.device
        any_greedy = any(p.greedy for p in params)
        greedy_tokens = logits.argmax(dim=-1) if any_greedy else None
        temperature = to_device([p.temperature if not p.greedy else 1.0 for p in params], device)
        logits = logits / temperature[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0 for p in params):
            top_k = to_device(batch.top_k(), device)
            top_p = to_device([p.top_p for p in params], device)
            min_p = to_device([p.min_p for p in params], device)
            logits = apply_top_k_top_p_min_p(logits, top_k, top_p, min_p)
        probs = logits.softmax(dim=-1)
        noise = exponential_noise(probs.shape, batch, self.generator, device)
        sampled = probs.div_(noise).argmax(dim=-1)
        if not any_greedy:
            return sampled
        return torch.where(to_device([p.greedy for p in params], device), greedy_tokens, sampled)
