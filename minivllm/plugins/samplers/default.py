"""Batched sampling on the device: greedy, temperature, top-k, top-p, min-p, per-request seeds, the
repetition / presence / frequency penalties, min_tokens and top-k logprobs.

Sampling uses the exponential-race trick: argmax(p / e) with e ~ Exp(1) draws from p. Rows with a
seed draw their noise from a generator seeded by (seed, step), so a seeded request's tokens do not
depend on what it is batched with; the rest share the engine's generator. No host sync per row.
"""

from __future__ import annotations

import torch

from minivllm.core.interfaces import Sampler, SamplerOutput
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence


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


def exponential_noise(shape, params: list[SamplingParams], steps: list[int], generator, device) -> torch.Tensor:
    noise = torch.empty(shape, device=device).exponential_(generator=generator)
    for row, (p, step) in enumerate(zip(params, steps)):
        if p.seed is not None and not p.greedy:
            g = torch.Generator(device=device)
            g.manual_seed((p.seed * 1_000_003 + step) & 0xFFFF_FFFF_FFFF_FFFF)
            noise[row].exponential_(generator=g)
    return noise


def to_device(values: list, device: torch.device) -> torch.Tensor:
    """A small per-row tensor on ``device`` without a host sync: a blocking copy would wait for the
    forward pass still running on the GPU before the sampler's kernels could be queued behind it."""
    tensor = torch.tensor(values)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    """[B, longest row] int64, ``pad`` after each row's end."""
    width = max(1, max(len(r) for r in rows))
    return to_device([r + [pad] * (width - len(r)) for r in rows], device)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """vLLM's penalties on logits [B, V]: repetition (prompt and output tokens: positive logits divided
    by it, negative ones multiplied), then frequency (times each token's count in the output) and
    presence (once per token present in the output) subtracted."""
    batch, vocab = logits.shape
    device = logits.device
    # counts [B, V + 1] of each output token; column V absorbs the padding
    outputs = padded([seq.output_token_ids for seq in seqs], vocab, device)
    ones = torch.ones_like(outputs, dtype=torch.float32)
    counts = torch.zeros(batch, vocab + 1, device=device).scatter_add_(1, outputs, ones)[:, :vocab]
    rep = to_device([seq.params.repetition_penalty for seq in seqs], device)[:, None]
    if any(seq.params.repetition_penalty != 1.0 for seq in seqs):
        prompts = padded([seq.token_ids[: seq.num_prompt_tokens] for seq in seqs], vocab, device)
        seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=device).scatter_(1, prompts, True)[:, :vocab]
        seen |= counts > 0
        logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    freq = to_device([seq.params.frequency_penalty for seq in seqs], device)[:, None]
    pres = to_device([seq.params.presence_penalty for seq in seqs], device)[:, None]
    return logits - freq * counts - pres * (counts > 0)


def ban_stop_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """min_tokens: a sequence that has not reached it cannot sample its stop tokens (EOS included)."""
    rows, cols = [], []
    for row, seq in enumerate(seqs):
        if seq.num_output_tokens < seq.params.min_tokens:
            rows += [row] * len(seq.stop_token_ids)
            cols += list(seq.stop_token_ids)
    if rows:
        logits = logits.index_put((to_device(rows, logits.device), to_device(cols, logits.device)),
                                  torch.tensor(float("-inf"), device=logits.device))
    return logits


def top_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: list[SamplingParams]):
    """Per row asking for them, the log-probability of the sampled token and the row's top
    ``params.logprobs`` tokens, from the model's raw distribution (as vLLM's default ``raw_logprobs``)."""
    logprobs = logits.log_softmax(dim=-1)
    k = max(p.logprobs or 0 for p in params)
    sampled = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
    top_values, top_ids = (t.tolist() for t in logprobs.topk(k, dim=-1)) if k else ([[]] * len(params),) * 2
    return [
        None if p.logprobs is None
        else (sampled[row], list(zip(top_ids[row][: p.logprobs], top_values[row][: p.logprobs])))
        for row, p in enumerate(params)
    ]


class DefaultSampler(Sampler):
    def sample_sequences(self, logits, seqs):
        params = [seq.params for seq in seqs]
        raw = logits
        if any(p.penalised for p in params):
            logits = apply_penalties(logits, seqs)
        if any(p.min_tokens for p in params):
            logits = ban_stop_tokens(logits, seqs)
        tokens = self.sample(logits, params, [seq.num_output_tokens for seq in seqs])
        if all(p.logprobs is None for p in params):
            return SamplerOutput(tokens)
        return SamplerOutput(tokens, top_logprobs(raw, tokens, params))

    def sample(self, logits, params, steps):
        if all(p.greedy for p in params):
            return logits.argmax(dim=-1)
        device = logits.device
        vocab = logits.shape[-1]
        any_greedy = any(p.greedy for p in params)
        greedy_tokens = logits.argmax(dim=-1) if any_greedy else None
        temperature = to_device([p.temperature if not p.greedy else 1.0 for p in params], device)
        logits = logits / temperature[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0 for p in params):
            top_k = to_device([p.top_k if p.top_k > 0 else vocab for p in params], device)
            top_p = to_device([p.top_p for p in params], device)
            min_p = to_device([p.min_p for p in params], device)
            logits = apply_top_k_top_p_min_p(logits, top_k, top_p, min_p)
        probs = logits.softmax(dim=-1)
        noise = exponential_noise(probs.shape, params, steps, self.generator, device)
        sampled = probs.div_(noise).argmax(dim=-1)
        if not any_greedy:
            return sampled
        return torch.where(to_device([p.greedy for p in params], device), greedy_tokens, sampled)
