"""A/B benchmarking of engine configurations: ``minivllm bench`` and :func:`compare`."""

from minivllm.bench.report import ArmResult, BenchResult
from minivllm.bench.runner import ArmFailed, compare
from minivllm.bench.stats import Comparison

__all__ = ["ArmFailed", "ArmResult", "BenchResult", "Comparison", "compare"]
