"""Statistics of the default sampler under fixed seeds: the empirical distribution matches the target."""

import pytest
import torch

from minivllm.core.interfaces import SamplingBatch
from minivllm.core.sampling_params import SamplingParams
from minivllm.plugins.samplers.default import DefaultSampler

N = 20000
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
# chi-square critical values at p = 0.001 by degrees of freedom
CHI2_CRIT = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def rows(params: list[SamplingParams], steps: list[int]) -> SamplingBatch:
    return SamplingBatch(params, steps, len(LOGITS))


def draw(params: SamplingParams, n: int = N, seed: int = 0) -> torch.Tensor:
    sampler = DefaultSampler(len(LOGITS), torch.device("cpu"), seed=seed)
    return sampler.sample(LOGITS.repeat(n, 1), rows([params] * n, [0] * n))


def assert_distribution(samples: torch.Tensor, expected: torch.Tensor) -> None:
    counts = torch.bincount(samples, minlength=len(expected)).double()
    support = expected > 0
    assert counts[~support].sum() == 0, f"sampled outside the support: {counts}"
    exp = expected[support].double() * len(samples)
    chi2 = float(((counts[support] - exp) ** 2 / exp).sum())
    assert chi2 < CHI2_CRIT[int(support.sum()) - 1], f"chi2={chi2:.1f}; counts={counts.tolist()}"


def test_greedy_is_argmax():
    assert draw(SamplingParams(temperature=0.0), n=4).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_matches_softmax(temperature):
    assert_distribution(draw(SamplingParams(temperature=temperature)), (LOGITS / temperature).softmax(-1))


def test_top_k_renormalises_over_the_k_best():
    expected = torch.zeros(8)
    expected[:3] = LOGITS[:3].softmax(-1)
    assert_distribution(draw(SamplingParams(top_k=3)), expected)


def test_top_p_keeps_the_smallest_nucleus():
    probs = LOGITS.softmax(-1)  # cumulative: .40 .65 .80 ... -> top_p=0.7 keeps 3 tokens
    expected = torch.zeros(8)
    expected[:3] = probs[:3] / probs[:3].sum()
    assert_distribution(draw(SamplingParams(top_p=0.7)), expected)


def test_min_p_drops_tokens_below_a_share_of_the_best():
    probs = LOGITS.softmax(-1)
    keep = probs >= 0.2 * probs[0]
    expected = torch.where(keep, probs, 0) / probs[keep].sum()
    assert_distribution(draw(SamplingParams(min_p=0.2)), expected)


def test_a_seeded_request_does_not_depend_on_its_batch():
    seeded = SamplingParams(seed=1234)
    sampler = DefaultSampler(len(LOGITS), torch.device("cpu"), seed=0)
    alone = [int(sampler.sample(LOGITS[None], rows([seeded], [step]))[0]) for step in range(20)]
    other = SamplingParams()
    in_batch = [
        int(sampler.sample(LOGITS.repeat(3, 1), rows([other, seeded, other], [5, step, 9]))[1]) for step in range(20)
    ]
    assert alone == in_batch
    assert len(set(alone)) > 1  # the step changes the draw


def test_mixed_batch_keeps_greedy_rows_greedy():
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)] * 500
    sampler = DefaultSampler(len(LOGITS), torch.device("cpu"), seed=0)
    out = sampler.sample(LOGITS.repeat(1000, 1), rows(params, [0] * 1000))
    assert out[0::2].eq(0).all() and out[1::2].ne(0).any()
