"""The `fused` sampler (here its PyTorch path; tests/gpu runs the Triton kernel): mixed batches, and exact
top-k / top-p / min-p floors without a sort. Its distribution against `default`'s on every setting and
its seeds' independence of the batch are tested with the `fast` sampler's, in test_fast_sampler.py."""

import pytest
import torch

from minivllm.core.sampling_params import SamplingParams
from minivllm.plugins.samplers.default import apply_top_k_top_p_min_p
from minivllm.plugins.samplers.fused import NUCLEUS_CANDIDATES, FusedSampler
from tests.plugins.test_fast_sampler import CASES, N, chi2_fit, counts, rows


@pytest.mark.parametrize(
    "other",
    [SamplingParams(min_p=0.2), SamplingParams(top_p=0.7), SamplingParams()],
    ids=["min_p", "top_p", "temperature"],
)
def test_mixed_batch_rows_keep_their_own_settings(other):
    params = [SamplingParams(top_k=3), other, SamplingParams(temperature=0.0)] * (N // 3)
    chi2_fit(counts(FusedSampler, params, slice(0, None, 3)), CASES["top_k"][1])
    other_case = {"min_p": "min_p alone", "top_p": "top_p alone (sort)"}.get(
        "min_p" if other.min_p else "top_p" if other.top_p < 1 else "", "temperature 1"
    )
    chi2_fit(counts(FusedSampler, params, slice(1, None, 3), seed=3), CASES[other_case][1])
    assert counts(FusedSampler, params, slice(2, None, 3))[0] == N // 3  # greedy rows: the argmax


SETTINGS = [
    dict(top_k=40),
    dict(top_p=0.8),
    dict(top_p=0.99),
    dict(min_p=0.02),
    dict(top_k=500, top_p=0.9),
    dict(top_k=7, min_p=0.1),
    dict(top_p=0.95, min_p=0.001, temperature=2.0),
    dict(top_k=3000, top_p=0.5),
]


@pytest.mark.parametrize("spread", [1.0, 0.05], ids=["peaked", "flat"])
def test_floors_keep_exactly_what_the_sort_keeps(spread):
    """On random logits over 4,000 tokens, the tokens at or above each row's floor are the tokens the
    sort-based rule of `default` keeps; with flat logits the nucleus of top_p=0.99 is wider than the
    candidates and takes the sorted path."""
    vocab = 4000
    params = [SamplingParams(temperature=s.pop("temperature", 0.7), **s) for s in map(dict, SETTINGS)]
    logits = torch.randn(len(params), vocab, generator=torch.Generator().manual_seed(0)) * spread * 4
    sampler = FusedSampler(vocab, torch.device("cpu"))
    batch = rows(params, [0] * len(params))
    batch.vocab_size = vocab
    inv_temp = torch.tensor([1 / p.temperature for p in params])
    kept = logits >= sampler._floors(logits, batch, inv_temp)[:, None]
    scaled = logits * inv_temp[:, None]
    top_k = torch.tensor(batch.top_k())
    expected = apply_top_k_top_p_min_p(
        scaled, top_k, torch.tensor([p.top_p for p in params]), torch.tensor([p.min_p for p in params])
    ) > float("-inf")
    assert torch.equal(kept, expected), (kept.sum(1), expected.sum(1))
    if spread < 1:
        assert expected[2].sum() > NUCLEUS_CANDIDATES  # the spill path ran


def test_greedy_batch_and_greedy_rows_take_the_argmax():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    sampler = FusedSampler(300, torch.device("cpu"))
    greedy = SamplingParams(temperature=0.0)
    batch = rows([greedy] * 6, [0] * 6)
    batch.vocab_size = 300
    assert torch.equal(sampler.sample(logits, batch), logits.argmax(-1))
    mixed = rows([greedy, SamplingParams(top_k=5)] * 3, [0] * 6)
    mixed.vocab_size = 300
    assert torch.equal(sampler.sample(logits, mixed)[0::2], logits.argmax(-1)[0::2])
