"""The `fast` and `fused` samplers draw from the same distribution as `default`, on every path they take.

For each setting, under fixed seeds: a chi-square goodness-of-fit test of each sampler's draws
against the exact target distribution, and a chi-square homogeneity test of its draws against
`default`'s (both at p = 0.001)."""

import pytest
import torch

from minivllm.core.interfaces import SamplingBatch
from minivllm.core.sampling_params import SamplingParams
from minivllm.plugins.samplers.default import DefaultSampler
from minivllm.plugins.samplers.fast import FastSampler
from minivllm.plugins.samplers.fused import FusedSampler

N = 20000
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
PROBS = LOGITS.softmax(-1)  # cumulative: .40 .65 .80 ...
# chi-square critical values at p = 0.001 by degrees of freedom
CHI2_CRIT = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def rows(params: list[SamplingParams], steps: list[int]) -> SamplingBatch:
    return SamplingBatch(params, steps, len(LOGITS))


def renormalised(keep: torch.Tensor, probs: torch.Tensor = PROBS) -> torch.Tensor:
    return torch.where(keep, probs, 0) / probs[keep].sum()


TOP3 = torch.arange(8) < 3
# name -> (params of one row, the exact distribution)
CASES = {
    "temperature 1": (SamplingParams(), PROBS),
    "temperature 0.5": (SamplingParams(temperature=0.5), (LOGITS / 0.5).softmax(-1)),
    "top_k": (SamplingParams(top_k=3), renormalised(TOP3)),
    "top_k + top_p": (SamplingParams(top_k=5, top_p=0.7), renormalised(TOP3)),
    "top_k + min_p": (SamplingParams(top_k=6, min_p=0.2), renormalised(PROBS >= 0.2 * PROBS[0])),
    "top_k + temperature 2": (
        SamplingParams(top_k=4, temperature=2.0),
        renormalised(torch.arange(8) < 4, (LOGITS / 2).softmax(-1)),
    ),
    "top_p alone (sort)": (SamplingParams(top_p=0.7), renormalised(TOP3)),
    "min_p alone": (SamplingParams(min_p=0.2), renormalised(PROBS >= 0.2 * PROBS[0])),
}


def chi2_fit(counts: torch.Tensor, expected: torch.Tensor) -> None:
    support = expected > 0
    assert counts[~support].sum() == 0, f"sampled outside the support: {counts.tolist()}"
    exp = expected[support].double() * counts.sum()
    chi2 = float(((counts[support] - exp) ** 2 / exp).sum())
    assert chi2 < CHI2_CRIT[int(support.sum()) - 1], f"fit: chi2={chi2:.1f}; counts={counts.tolist()}"


def chi2_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Homogeneity of two count vectors (a 2 x k contingency table)."""
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    total = a + b
    exp_a, exp_b = total * a.sum() / total.sum(), total * b.sum() / total.sum()
    chi2 = float(((a - exp_a) ** 2 / exp_a + (b - exp_b) ** 2 / exp_b).sum())
    assert chi2 < CHI2_CRIT[len(total) - 1], f"fast vs default: chi2={chi2:.1f}; {a.tolist()} vs {b.tolist()}"


def counts(sampler_cls, params: list[SamplingParams], which: slice = slice(None), seed: int = 0) -> torch.Tensor:
    sampler = sampler_cls(len(LOGITS), torch.device("cpu"), seed=seed)
    out = sampler.sample(LOGITS.repeat(len(params), 1), rows(params, [0] * len(params)))
    return torch.bincount(out[which], minlength=len(LOGITS)).double()


@pytest.mark.parametrize("sampler_cls", [FastSampler, FusedSampler])
@pytest.mark.parametrize("case", list(CASES))
def test_same_distribution_as_default(case, sampler_cls):
    params, expected = CASES[case]
    fast = counts(sampler_cls, [params] * N, seed=0)
    chi2_fit(fast, expected)
    chi2_same(fast, counts(DefaultSampler, [params] * N, seed=2))


@pytest.mark.parametrize("other", [SamplingParams(min_p=0.2), SamplingParams(top_p=0.7)], ids=["thresholds", "sort"])
def test_mixed_batch_rows_keep_their_own_settings(other):
    """top-k rows beside rows without top-k: per-row thresholds, or the sort when a row needs top-p."""
    params = [SamplingParams(top_k=3), other] * (N // 2)
    chi2_fit(counts(FastSampler, params, slice(0, None, 2)), CASES["top_k"][1])
    other_case = "min_p alone" if other.min_p else "top_p alone (sort)"
    chi2_fit(counts(FastSampler, params, slice(1, None, 2), seed=3), CASES[other_case][1])


@pytest.mark.parametrize("case", ["temperature 0.5", "top_p alone (sort)", "min_p alone"])
def test_full_vocabulary_paths_draw_the_same_tokens_as_default(case):
    """Without a top-k pre-filter the noise covers the whole vocabulary as `default`'s does, and
    argmax(logits - log e) picks what argmax(softmax / e) picks: the same tokens from the same seed."""
    params = [CASES[case][0], SamplingParams(top_k=3), SamplingParams(temperature=0.0)] * 100
    logits, batch = LOGITS.repeat(300, 1), rows(params, [0] * 300)
    fast = FastSampler(len(LOGITS), torch.device("cpu"), seed=5).sample(logits, batch)
    default = DefaultSampler(len(LOGITS), torch.device("cpu"), seed=5).sample(logits, batch)
    assert fast.tolist() == default.tolist()


def test_greedy_rows_stay_greedy_in_every_path():
    for other in (SamplingParams(), SamplingParams(top_k=2), SamplingParams(top_p=0.5)):
        params = [SamplingParams(temperature=0.0), other] * 500
        sampler = FastSampler(len(LOGITS), torch.device("cpu"), seed=0)
        out = sampler.sample(LOGITS.repeat(1000, 1), rows(params, [0] * 1000))
        assert out[0::2].eq(0).all() and out[1::2].ne(0).any()


@pytest.mark.parametrize("sampler_cls", [FastSampler, FusedSampler])
@pytest.mark.parametrize("params", [SamplingParams(seed=1234), SamplingParams(seed=1234, top_k=4, top_p=0.9)])
def test_a_seeded_request_does_not_depend_on_its_batch(params, sampler_cls):
    sampler = sampler_cls(len(LOGITS), torch.device("cpu"), seed=0)
    alone = [int(sampler.sample(LOGITS[None], rows([params], [step]))[0]) for step in range(20)]
    other = SamplingParams(top_k=2)
    in_batch = [
        int(sampler.sample(LOGITS.repeat(3, 1), rows([other, params, other], [5, step, 9]))[1]) for step in range(20)
    ]
    assert alone == in_batch
    assert len(set(alone)) > 1  # the step changes the draw


def test_in_the_engine_greedy_matches_transformers_and_default_features_carry_over(llama_path):
    from minivllm import LLM
    from tests.checkpoints import hf_greedy, random_prompts

    prompts = random_prompts(3, 5, 30, seed=7)
    llm = LLM(llama_path, sampler="fast", kvcache_block_size=16, max_model_len=256)
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    assert [o["tokens"] for o in llm.generate(prompts, greedy, use_tqdm=False)] == hf_greedy(llama_path, prompts, 8)
    # penalties and logprobs come from the core; top-k sampling from this sampler
    params = SamplingParams(top_k=5, seed=3, max_tokens=6, ignore_eos=True, logprobs=2, repetition_penalty=1.3)
    out = llm.generate(prompts, params, use_tqdm=False)
    assert out == llm.generate(prompts, params, use_tqdm=False)  # seeded: reproducible
    assert all(len(o["tokens"]) == 6 and len(o["logprobs"]) == 6 for o in out)
