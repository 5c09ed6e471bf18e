"""What the core does around every sampler: request semantics a sampler never has to know about.

Before :meth:`Sampler.sample` runs, :func:`process_logits` applies, batched on the device, what depends
on a sequence's history: vLLM's repetition / presence / frequency penalties, the ``min_tokens`` ban
on stop tokens (EOS included) and the tokens a structured-output grammar forbids (:func:`apply_token_mask`).
After it, :func:`compute_logprobs` takes the sampled token's
log-probability and the top ``k`` from the raw logits (vLLM's default, ``raw_logprobs``). So a
third-party sampler that only picks tokens still honours every ``SamplingParams`` field.

A token still in flight (sampled by the step before, see engine.py) is part of a sequence's history
already: the runner passes it as ``pending`` so the penalties count it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minivllm.core.interfaces.sampler import SamplingBatch, TokenLogprobs
from minivllm.core.sequence import Sequence
from minivllm.core.structured_output import TokenMask


def to_device(values: list | np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small per-row tensor on ``device`` without a host sync: a blocking copy would wait for the
    forward pass still running on the GPU before the sampler's kernels could be queued behind it."""
    tensor = torch.as_tensor(values, dtype=dtype)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def padded(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    """[B, longest row] int64, ``pad`` after each row's end."""
    width = max(1, max(len(r) for r in rows))
    return to_device([r + [pad] * (width - len(r)) for r in rows], device, torch.int64)


def needs_processing(seqs: list[Sequence], mask: TokenMask | None = None) -> bool:
    return mask is not None or any(
        seq.params.penalised or seq.num_generated_tokens < seq.params.min_tokens for seq in seqs
    )


def process_logits(
    logits: torch.Tensor, seqs: list[Sequence], pending: torch.Tensor | None, mask: TokenMask | None = None
) -> torch.Tensor:
    """Penalties, ``min_tokens`` bans and the grammars' ``mask`` on logits [B, V]; returns new float32
    logits (``logits`` is kept for logprobs). ``pending`` [B] int64: each row's token in flight, ``V`` where
    it has none."""
    logits = logits.float()
    if any(seq.params.penalised for seq in seqs):
        logits = apply_penalties(logits, seqs, pending)
    if any(seq.num_generated_tokens < seq.params.min_tokens for seq in seqs):
        logits = ban_stop_tokens(logits, seqs)
    if mask is not None:
        logits = apply_token_mask(logits, seqs, mask)
    return logits


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence], pending: torch.Tensor | None) -> torch.Tensor:
    """vLLM's penalties on logits [B, V]: repetition (prompt and output tokens: positive logits divided
    by it, negative ones multiplied), then frequency (times each token's count in the output) and
    presence (once per token present in the output) subtracted."""
    batch, vocab = logits.shape
    device = logits.device
    # counts [B, V + 1] of each output token; column V absorbs the padding
    outputs = padded([seq.output_token_ids for seq in seqs], vocab, device)
    if pending is not None:
        outputs = torch.cat([outputs, pending[:, None]], dim=1)
    ones = torch.ones_like(outputs, dtype=torch.float32)
    counts = torch.zeros(batch, vocab + 1, device=device).scatter_add_(1, outputs, ones)[:, :vocab]
    if any(seq.params.repetition_penalty != 1.0 for seq in seqs):
        rep = to_device([seq.params.repetition_penalty for seq in seqs], device)[:, None]
        prompts = padded([seq.token_ids[: seq.num_prompt_tokens] for seq in seqs], vocab, device)
        seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=device).scatter_(1, prompts, True)[:, :vocab]
        seen |= counts > 0
        logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    freq = to_device([seq.params.frequency_penalty for seq in seqs], device)[:, None]
    pres = to_device([seq.params.presence_penalty for seq in seqs], device)[:, None]
    return logits - freq * counts - pres * (counts > 0)


def ban_stop_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """``min_tokens``: a sequence that has not reached it cannot sample its stop tokens (EOS included)."""
    rows, cols = [], []
    for row, seq in enumerate(seqs):
        if seq.num_generated_tokens < seq.params.min_tokens:
            rows += [row] * len(seq.stop_token_ids)
            cols += list(seq.stop_token_ids)
    if rows:
        logits = logits.index_put(
            (to_device(rows, logits.device), to_device(cols, logits.device)),
            torch.tensor(float("-inf"), device=logits.device),
        )
    return logits


def apply_token_mask(logits: torch.Tensor, seqs: list[Sequence], mask: TokenMask) -> torch.Tensor:
    """Structured output: the tokens a row's grammar forbids get -inf, in one pass over logits [B, V]. The
    bitmask travels to the device as one [B, V / 32] int32 tensor (all ones for unconstrained rows)."""
    batch, vocab = logits.shape
    words = mask.bits.shape[1]
    full = np.full((batch, words), -1, dtype=np.int32)
    for row, seq in enumerate(seqs):
        if (src := mask.rows.get(seq.seq_id)) is not None:
            full[row] = mask.bits[src]
    bits = to_device(full, logits.device)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((bits[:, :, None] >> shifts) & 1).bool().view(batch, words * 32)[:, :vocab]  # [B, V]
    return logits.masked_fill(~allowed, float("-inf"))


@dataclass
class DeviceLogprobs:
    """Logprobs of the rows that asked for them, still on the device (fetched with the tokens)."""

    rows: list[int]  # which batch rows, in order
    ks: list[int]  # each row's ``params.logprobs``
    sampled: torch.Tensor  # [R] float32: the sampled token's log-probability
    top_values: torch.Tensor  # [R, max k] float32
    top_ids: torch.Tensor  # [R, max k] int64

    def map(self, fn) -> DeviceLogprobs:
        """The same logprobs with ``fn`` applied to each tensor (e.g. a copy to the host)."""
        return DeviceLogprobs(self.rows, self.ks, fn(self.sampled), fn(self.top_values), fn(self.top_ids))

    def per_row(self, num_rows: int) -> list[TokenLogprobs | None]:
        """Per batch row: (sampled logprob, [(id, logprob)] top k), None where none was asked for."""
        out: list[TokenLogprobs | None] = [None] * num_rows
        sampled, values, ids = self.sampled.tolist(), self.top_values.tolist(), self.top_ids.tolist()
        for i, (row, k) in enumerate(zip(self.rows, self.ks)):
            out[row] = (sampled[i], list(zip(ids[i][:k], values[i][:k])))
        return out


def compute_logprobs(raw: torch.Tensor, tokens: torch.Tensor, batch: SamplingBatch) -> DeviceLogprobs | None:
    """The log-probability of each sampled token and the top ``params.logprobs`` tokens, from the model's
    raw distribution, for the rows that ask; None when no row does."""
    rows = [i for i, p in enumerate(batch.params) if p.logprobs is not None]
    if not rows:
        return None
    ks = [batch.params[i].logprobs for i in rows]
    index = to_device(rows, raw.device, torch.int64)
    logprobs = raw.index_select(0, index).float().log_softmax(dim=-1)  # [R, V]
    sampled = logprobs.gather(1, tokens.index_select(0, index)[:, None])[:, 0]
    top_values, top_ids = logprobs.topk(max(ks), dim=-1) if max(ks) else (logprobs[:, :0], logprobs[:, :0].long())
    return DeviceLogprobs(rows, ks, sampled, top_values, top_ids)
