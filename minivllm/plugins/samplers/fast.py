"""The `fast` sampler: the distribution of `default`, without its full-vocabulary sort where it can.

`default` sorts every row of the vocabulary (and takes a softmax) whenever a row sets top-k, top-p or
min-p. Here, by batch:

- every sampling row sets top-k: ``torch.topk`` to the largest k gives each row's candidates in order;
  top-p and min-p are decided among them with probabilities normalised over the whole row (one
  logsumexp), exactly as `default` decides them, since everything `default` keeps lies in the top k.
- some row sets top-p without top-k: a nucleus over the whole vocabulary needs the sort; `default`'s.
- otherwise (temperature, min-p, top-k on some rows): thresholds instead of a sort, the k-th largest
  logit for top-k and ``max + log(min_p)`` for min-p, then Gumbel-max, ``argmax(logits + g)`` with
  ``g = -log(e)``, ``e ~ Exp(1)``: the same race as `default`'s ``argmax(p / e)`` without the softmax.
  Tokens tied with the k-th largest logit all stay (a sort keeps exactly k).

Seeded rows draw their noise as in `default` (from (seed, step)), so they do not depend on their batch;
their tokens differ from `default`'s because the noise covers candidates, not the whole vocabulary.
"""

from __future__ import annotations

import torch

from minivllm.core.interfaces import Sampler
from minivllm.core.sampling import to_device
from minivllm.plugins.samplers.default import apply_top_k_top_p_min_p, exponential_noise


class FastSampler(Sampler):
    def sample(self, logits, batch):
        logits = logits.float()
        if batch.all_greedy:
            return logits.argmax(dim=-1)
        params = batch.params
        device = logits.device
        vocab = logits.shape[-1]
        sampling = [p for p in params if not p.greedy]
        greedy_tokens = logits.argmax(dim=-1) if len(sampling) < len(params) else None
        temperature = to_device([1.0 if p.greedy else p.temperature for p in params], device)
        logits = logits / temperature[:, None]
        top_k = batch.top_k()
        if all(0 < p.top_k < vocab for p in sampling):
            sampled = self._race_top_k(logits, batch, top_k)
        elif any(p.top_p < 1.0 for p in sampling):
            top_p = to_device([p.top_p for p in params], device)
            min_p = to_device([p.min_p for p in params], device)
            logits = apply_top_k_top_p_min_p(logits, to_device(top_k, device), top_p, min_p)
            sampled = self._gumbel_max(logits, batch)
        else:
            sampled = self._gumbel_max(self._thresholds(logits, params, top_k), batch)
        if greedy_tokens is None:
            return sampled
        return torch.where(to_device([p.greedy for p in params], device), greedy_tokens, sampled)

    def _race_top_k(self, logits, batch, top_k: list[int]) -> torch.Tensor:
        device = logits.device
        params = batch.params
        k = max(k for p, k in zip(params, top_k) if not p.greedy)
        values, ids = logits.topk(k, dim=-1)  # [B, k], descending
        probs = (values - logits.logsumexp(dim=-1, keepdim=True)).exp()  # [B, k], over the whole row
        remove = torch.arange(k, device=device)[None, :] >= to_device(top_k, device)[:, None]
        if any(p.top_p < 1.0 for p in params):
            # as `default`: drop a token once the mass before it reaches top_p (the first always stays)
            remove |= (probs.cumsum(dim=-1) - probs) >= to_device([p.top_p for p in params], device)[:, None]
        if any(p.min_p > 0.0 for p in params):
            remove |= probs < to_device([p.min_p for p in params], device)[:, None] * probs[:, :1]
        scores = probs.masked_fill_(remove, 0.0).div_(exponential_noise(probs.shape, batch, self.generator, device))
        return ids.gather(1, scores.argmax(dim=-1, keepdim=True))[:, 0]

    @staticmethod
    def _thresholds(logits, params, top_k: list[int]) -> torch.Tensor:
        """Mask to -inf the logits below each row's k-th largest and below its min-p threshold."""
        device = logits.device
        vocab = logits.shape[-1]
        if any(k < vocab for k in top_k):
            on = [k < vocab for k in top_k]
            largest = logits.topk(max(k for k in top_k if k < vocab), dim=-1).values  # [B, max k]
            index = to_device([k - 1 if k < vocab else 0 for k in top_k], device)[:, None]
            kth = largest.gather(1, index).masked_fill_(~to_device(on, device)[:, None], float("-inf"))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if any(p.min_p > 0.0 for p in params):
            # p < min_p * p_max  <=>  logit < max logit + log(min_p); log(0) = -inf removes nothing
            floor = logits.amax(dim=-1, keepdim=True) + to_device([p.min_p for p in params], device).log()[:, None]
            logits = logits.masked_fill(logits < floor, float("-inf"))
        return logits

    def _gumbel_max(self, logits, batch) -> torch.Tensor:
        noise = exponential_noise(logits.shape, batch, self.generator, logits.device)
        return (logits - noise.log_()).argmax(dim=-1)
