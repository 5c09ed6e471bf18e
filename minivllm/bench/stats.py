"""Statistics of a comparison: percentiles, the ratio of medians with a bootstrap interval, a verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FASTER, SLOWER, SAME = "faster", "slower", "no detectable difference"
# fewer repeats claim nothing: two values of each arm fall wholly apart by chance a third of the time
MIN_REPEATS_FOR_VERDICT = 3


@dataclass
class Comparison:
    baseline: str
    arm: str
    ratio: float  # median of the arm / median of the baseline (> 1: the arm is faster)
    ci95: list[float] | None  # bootstrap 95% interval of the ratio; None with a single repeat
    verdict: str


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ratio_of_medians(
    arm: list[float], baseline: list[float], resamples: int = 10000, seed: int = 0
) -> tuple[float, list[float] | None]:
    """The ratio of the medians and its percentile-bootstrap 95% interval: both samples are resampled
    with replacement ``resamples`` times (seeded, so a result is reproducible). No interval when either
    sample has one value: nothing tells its spread."""
    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    ratio = float(np.median(a) / np.median(b))
    if len(a) < 2 or len(b) < 2:
        return ratio, None
    rng = np.random.default_rng(seed)
    med_a = np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1)  # [resamples]
    med_b = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    lo, hi = np.percentile(med_a / med_b, [2.5, 97.5])
    return ratio, [float(lo), float(hi)]


def verdict(ci95: list[float] | None) -> str:
    """`faster` when the whole interval lies above 1, `slower` when below, else no detectable difference."""
    if ci95 is None:
        return SAME
    if ci95[0] > 1.0:
        return FASTER
    if ci95[1] < 1.0:
        return SLOWER
    return SAME


def compare_samples(baseline: str, arm: str, arm_values: list[float], baseline_values: list[float]) -> Comparison:
    ratio, ci = ratio_of_medians(arm_values, baseline_values)
    enough = min(len(arm_values), len(baseline_values)) >= MIN_REPEATS_FOR_VERDICT
    return Comparison(baseline, arm, ratio, ci, verdict(ci) if enough else SAME)
