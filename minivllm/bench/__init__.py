"""A/B benchmarking of engine configurations: ``minivllm bench`` and :func:`compare`.

The split with ``benchmarks/``: this package is the ``minivllm bench`` feature, plus what the benchmark
scripts and the tests share (:mod:`~minivllm.bench.shapes`, real models' shapes with random weights;
:mod:`~minivllm.bench.scrape`, a server's ``/metrics`` as a dict). ``benchmarks/`` holds scripts only, run
by hand or by ``scripts/gpu_check.sh``; nothing imports them but each other.
"""

from minivllm.bench.report import ArmResult, BenchResult
from minivllm.bench.runner import ArmFailed, compare
from minivllm.bench.stats import Comparison

__all__ = ["ArmFailed", "ArmResult", "BenchResult", "Comparison", "compare"]
