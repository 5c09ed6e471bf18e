"""The `fused` sampler: one pass over the logits for greedy and temperature sampling, and top-k / top-p /
min-p as a per-row floor instead of a sort of the vocabulary.

Sampling is Gumbel-max: ``argmax(logit / T + g)`` with ``g = -log(-log u)``, ``u ~ U(0, 1)``, draws from
``softmax(logit / T)``. On CUDA one Triton kernel reads each row once (in the model's dtype: no float32
copy), adds the noise, which Philox generates from a per-row seed and the token's index, and takes the
argmax (see :mod:`fused_kernels`); greedy rows take the plain argmax in the same pass. So a row's noise
depends only on its seed: a request with ``seed`` uses ``hash(seed, step)``, so its tokens do not depend
on its batch; other rows draw a fresh seed per step from the sampler's own generator.

Top-k, top-p and min-p all keep a prefix of the tokens in descending order, so each row's rule is a
floor on the logit: the k-th largest logit; the smallest logit of the top-p nucleus; ``max + T log
min_p``. Floors come from ``torch.topk`` over a few candidates (the largest top-k in the batch, or 1,024
for a nucleus without top-k) and one logsumexp, never a sort of the vocabulary, except for a row whose
nucleus reaches past its candidates (a very flat distribution), which gets `default`'s sort. Tokens tied
with a row's floor all stay (a sort keeps exactly k); otherwise the distribution is `default`'s.

Without CUDA the same floors and Gumbel-max run in plain PyTorch (a generator per row seeded the same
way), the reference the kernel is tested against.
"""

from __future__ import annotations

import math
import random

import torch

from minivllm.core.interfaces import Sampler, SamplingBatch, row_seed
from minivllm.core.sampling import to_device

NUCLEUS_CANDIDATES = 1024  # candidates for a top-p row without top-k; the sort covers a nucleus wider than this


class FusedSampler(Sampler):
    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0):
        super().__init__(vocab_size, device, seed)
        self.rng = random.Random(seed)  # seeds of rows without a seed of their own
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0

    def sample(self, logits, batch):
        if batch.all_greedy:
            return logits.argmax(dim=-1)
        params = batch.params
        device = logits.device
        seeds = [
            row_seed(p.seed, step) if p.seed is not None else self.rng.getrandbits(63)
            for p, step in zip(params, batch.steps)
        ]
        inv_temp = to_device([0.0 if p.greedy else 1.0 / p.temperature for p in params], device, torch.float32)
        floor = self._floors(logits, batch, inv_temp)
        seeds_t = to_device(seeds, device, torch.int64)
        if device.type == "cuda":
            from minivllm.plugins.samplers import fused_kernels

            return fused_kernels.gumbel_argmax(logits.contiguous(), inv_temp, floor, seeds_t, self.num_sms)
        return gumbel_argmax_reference(logits, inv_temp, floor, seeds)

    def _floors(self, logits: torch.Tensor, batch: SamplingBatch, inv_temp: torch.Tensor) -> torch.Tensor:
        """[B] float32: each row keeps the tokens whose logit is at least this (-inf: all of them). Each
        rule keeps a prefix of the tokens in descending order, so together they keep the shortest: the
        highest of their floors."""
        params, device = batch.params, logits.device
        vocab = logits.shape[1]
        floor = torch.full((logits.shape[0],), float("-inf"), device=device)
        top_k = batch.top_k()  # vocab where off
        if any(not p.greedy and p.min_p > 0.0 for p in params):
            # p >= min_p * p_max  <=>  logit >= max + T log(min_p)
            shift = [
                math.log(p.min_p) * p.temperature if not p.greedy and p.min_p > 0.0 else float("-inf") for p in params
            ]
            floor = logits.amax(dim=-1).float() + to_device(shift, device, torch.float32)
        nucleus = [not p.greedy and p.top_p < 1.0 for p in params]
        wanted = [k if k < vocab else NUCLEUS_CANDIDATES if n else 0 for k, n in zip(top_k, nucleus)]
        if not any(wanted):
            return floor
        num_candidates = min(vocab, max(wanted))
        values = logits.topk(num_candidates, dim=-1).values.float()  # [B, C], descending
        if any(k < vocab for k in top_k):
            kth = values.gather(1, to_device([min(k, num_candidates) - 1 for k in top_k], device)[:, None])[:, 0]
            floor = torch.where(to_device([k < vocab for k in top_k], device), torch.maximum(floor, kth), floor)
        if any(nucleus):
            scaled = logits.float() * inv_temp[:, None]
            probs = (values * inv_temp[:, None] - scaled.logsumexp(dim=-1, keepdim=True)).exp()  # over the whole row
            # the nucleus: tokens before which the mass has not reached top_p (the first always stays)
            top_p = to_device([p.top_p for p in params], device)
            size = ((probs.cumsum(dim=-1) - probs) < top_p[:, None]).sum(dim=-1, keepdim=True)
            in_nucleus = values.gather(1, size - 1)[:, 0]
            # a nucleus that fills every candidate of a row without top-k may reach past them: sort that
            # row (rare: a very flat distribution; it costs a host sync)
            spill = [n and k == vocab for n, k in zip(nucleus, top_k)]
            if num_candidates < vocab and any(spill):
                spilling = to_device(spill, device) & (size[:, 0] == num_candidates)
                for row in spilling.nonzero()[:, 0].tolist():
                    in_nucleus[row] = _nucleus_floor(scaled[row], logits[row], params[row].top_p)
            floor = torch.where(to_device(nucleus, device), torch.maximum(floor, in_nucleus), floor)
        return floor


def _nucleus_floor(scaled: torch.Tensor, row: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest logit of one row's top-p nucleus, from a sort of the whole row (`default`'s rule)."""
    order = scaled.argsort(descending=True)
    probs = scaled[order].softmax(dim=-1)
    size = int(((probs.cumsum(dim=-1) - probs) < top_p).sum())
    return row[order[size - 1]].float()


def gumbel_argmax_reference(
    logits: torch.Tensor, inv_temp: torch.Tensor, floor: torch.Tensor, seeds: list[int]
) -> torch.Tensor:
    """What the kernel computes, in PyTorch: per row, argmax of ``logit * inv_temp + Gumbel noise`` (the
    plain argmax where ``inv_temp`` is 0) over the tokens at or above ``floor``."""
    logits = logits.float()
    scores = torch.empty_like(logits)
    for row, seed in enumerate(seeds):
        if inv_temp[row] > 0:
            generator = torch.Generator(device=logits.device).manual_seed(seed)
            u = torch.rand(logits.shape[1], generator=generator, device=logits.device)
            scores[row] = logits[row] * inv_temp[row] - (-u.log()).log()
        else:
            scores[row] = logits[row]
    return scores.masked_fill_(logits < floor[:, None], float("-inf")).argmax(dim=-1)
