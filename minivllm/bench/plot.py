"""The comparison as a PNG: per-repeat output throughput per arm, and each arm's TTFT distribution.

matplotlib is an optional extra (``pip install 'minivllm[plot]'``); only this module imports it, and a
``Figure`` is drawn without pyplot, so no GUI backend is touched. A saved result (``--json``, say from
a machine without matplotlib) is plotted with ``python -m minivllm.bench.plot RESULT.json OUT.png``.
"""

from __future__ import annotations

import json
import sys

from minivllm.bench.report import BenchResult


def plot(result: BenchResult, path: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'minivllm[plot]'") from None
    names = [arm.name for arm in result.arms]
    fig = Figure(figsize=(max(10, 3 + 2.2 * len(names)), 4.8))
    throughput, ttft = fig.subplots(1, 2)
    repeats = range(1, result.repeats + 1)
    for arm in result.arms:
        throughput.plot(repeats, arm.output_tokens_per_s, marker="o", label=arm.name)
    throughput.set(
        xlabel="repeat (arms interleaved)",
        ylabel="output tokens/s",
        title=f"throughput per repeat ({result.workload}, {result.num_prompts} prompts)",
    )
    throughput.set_xticks(list(repeats))
    throughput.legend(fontsize="small")
    ttft.boxplot([arm.ttft_ms or [0.0] for arm in result.arms])
    ttft.set_xticks(range(1, len(names) + 1), names, rotation=15, ha="right", fontsize="small")
    ttft.set(ylabel="TTFT (ms)", title="time to first token, every request of every repeat")
    fig.suptitle(f"minivllm bench on {result.device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(json_path: str, png_path: str) -> None:
    with open(json_path) as f:
        plot(BenchResult.from_dict(json.load(f)), png_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
