"""The comparison statistics on synthetic samples: verdicts, intervals, and the output cross-check score."""

import numpy as np
import pytest

from minivllm.bench.report import agreement
from minivllm.bench.stats import FASTER, SAME, SLOWER, compare_samples, ratio_of_medians, verdict


def draws(mean: float, seed: int, n: int = 5, spread: float = 0.02) -> list[float]:
    """``n`` throughputs around ``mean`` with a relative noise of ``spread`` (one run's jitter)."""
    return list(mean * (1 + spread * np.random.default_rng(seed).standard_normal(n)))


@pytest.mark.parametrize("seed", range(10))
def test_samples_ten_percent_apart_are_faster_and_slower(seed):
    base, better = draws(100.0, seed), draws(110.0, 1000 + seed)
    fast = compare_samples("a", "b", better, base)
    assert fast.verdict == FASTER and fast.ci95[0] > 1.0
    assert fast.ratio == pytest.approx(np.median(better) / np.median(base))
    assert compare_samples("a", "b", base, better).verdict == SLOWER


def test_two_draws_of_one_distribution_show_no_difference():
    verdicts = [compare_samples("a", "b", draws(100.0, seed), draws(100.0, 500 + seed)).verdict for seed in range(40)]
    # a 95% interval: about 2 of 40 comparisons of equals may claim a difference by chance
    assert verdicts.count(SAME) >= 36, verdicts


def test_interval_contains_the_ratio_and_is_reproducible():
    a, b = draws(100.0, 1), draws(103.0, 2)
    ratio, ci = ratio_of_medians(b, a)
    assert ci[0] <= ratio <= ci[1]
    assert ratio_of_medians(b, a) == (ratio, ci)


def test_a_single_repeat_gives_no_interval_and_no_claim():
    ratio, ci = ratio_of_medians([120.0], [100.0])
    assert ratio == pytest.approx(1.2) and ci is None
    assert verdict(ci) == SAME


def test_two_repeats_claim_nothing_however_far_apart():
    comparison = compare_samples("a", "b", [200.0, 201.0], [100.0, 101.0])
    assert comparison.ci95[0] > 1.0 and comparison.verdict == SAME
    assert compare_samples("a", "b", [200.0, 201.0, 202.0], [100.0, 101.0, 102.0]).verdict == FASTER


def test_verdict_reads_the_interval():
    assert verdict([1.01, 1.2]) == FASTER
    assert verdict([0.8, 0.99]) == SLOWER
    assert verdict([0.99, 1.01]) == SAME


def test_agreement_counts_tokens_before_the_first_difference():
    assert agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert agreement([[1, 2, 9, 4], [5, 6]], [[1, 2, 3, 4], [5, 6]]) == pytest.approx((2 / 4 + 1) / 2)
    assert agreement([[7, 7, 7]], [[1, 2, 3]]) == 0.0
    assert agreement([[1, 2]], [[1, 2, 3, 4]]) == 0.5  # a shorter output agrees only as far as it goes
