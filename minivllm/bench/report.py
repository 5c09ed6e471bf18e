"""A comparison's result: per-arm measurements, the cross-check, the comparisons; as a table or JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, fields

from minivllm.bench.stats import MIN_REPEATS_FOR_VERDICT, Comparison, percentile

FLOAT32 = "float32"


def emit_json_line(row: dict, path: str | None) -> None:
    """What every benchmark script does with a result row: print it as one JSON line, and append it to
    ``path`` (a JSON-lines file) when given."""
    line = json.dumps(row)
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@dataclass
class ArmResult:
    name: str
    config: dict  # the EngineConfig fields the arm sets (its own and the common ones)
    dtype: str
    attention_backend: str  # as resolved ("auto" -> the backend that ran)
    output_tokens_per_s: list[float]  # one per repeat
    total_tokens_per_s: list[float]  # prompt and output tokens, one per repeat
    ttft_ms: list[float]  # every request of every repeat
    tpot_ms: list[float]
    peak_memory_bytes: int  # the largest of the repeats
    kv_blocks: int
    preemptions: list[int]  # one per repeat
    agreement_rate: float  # cross-check: mean share of each prompt's tokens agreeing with the baseline's
    outputs_agree: bool | None  # token for token; None unless both this arm and the baseline ran in float32

    @property
    def median_output_tokens_per_s(self) -> float:
        return statistics.median(self.output_tokens_per_s)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "config": self.config,
            "dtype": self.dtype,
            "attention_backend": self.attention_backend,
            "output_tokens_per_s": self.output_tokens_per_s,
            "median_output_tokens_per_s": self.median_output_tokens_per_s,
            "total_tokens_per_s": self.total_tokens_per_s,
            "median_total_tokens_per_s": statistics.median(self.total_tokens_per_s),
            "ttft_ms_p50": percentile(self.ttft_ms, 50),
            "ttft_ms_p90": percentile(self.ttft_ms, 90),
            "tpot_ms_p50": percentile(self.tpot_ms, 50),
            "tpot_ms_p90": percentile(self.tpot_ms, 90),
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "peak_memory_bytes": self.peak_memory_bytes,
            "kv_blocks": self.kv_blocks,
            "preemptions": self.preemptions,
            "agreement_rate": self.agreement_rate,
            "outputs_agree": self.outputs_agree,
        }

    def check_label(self, is_baseline: bool) -> str:
        if is_baseline:
            return "baseline"
        if self.outputs_agree is None:
            return f"{self.agreement_rate:.0%} agree ({self.dtype})"
        return "agree" if self.outputs_agree else f"DISAGREE ({self.agreement_rate:.0%})"


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Mean over prompts of the share of the reference's tokens matched before the first difference."""
    shares = []
    for got, want in zip(tokens, reference):
        same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        shares.append(same / max(len(got), len(want), 1))
    return sum(shares) / len(shares) if shares else 1.0


def summarise_arm(name: str, config: dict, check: dict, runs: list[dict], baseline_check: dict) -> ArmResult:
    both_float32 = check["dtype"] == FLOAT32 and baseline_check["dtype"] == FLOAT32
    return ArmResult(
        name=name,
        config=config,
        dtype=check["dtype"],
        attention_backend=check["attention_backend"],
        output_tokens_per_s=[r["output_tokens"] / r["wall_s"] for r in runs],
        total_tokens_per_s=[(r["output_tokens"] + r["prompt_tokens"]) / r["wall_s"] for r in runs],
        ttft_ms=[1e3 * t for r in runs for t in r["ttft_s"]],
        tpot_ms=[1e3 * t for r in runs for t in r["tpot_s"]],
        peak_memory_bytes=max(r["peak_memory_bytes"] for r in runs),
        kv_blocks=check["kv_blocks"],
        preemptions=[r["preemptions"] for r in runs],
        agreement_rate=agreement(check["tokens"], baseline_check["tokens"]),
        outputs_agree=check["tokens"] == baseline_check["tokens"] if both_float32 else None,
    )


@dataclass
class BenchResult:
    workload: str
    num_prompts: int
    repeats: int
    device: str
    commit: str | None
    arms: list[ArmResult]
    comparisons: list[Comparison]
    sampling: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        agree = {arm.name: arm.outputs_agree for arm in self.arms}
        return {
            "workload": self.workload,
            "num_prompts": self.num_prompts,
            "repeats": self.repeats,
            "device": self.device,
            "commit": self.commit,
            "sampling": self.sampling,
            "arms": [arm.to_dict() for arm in self.arms],
            "comparisons": [{**vars(c), "outputs_agree": agree[c.arm]} for c in self.comparisons],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> BenchResult:
        """The inverse of :meth:`to_dict` (to re-plot or re-print a saved result)."""
        arms = [ArmResult(**{f.name: arm[f.name] for f in fields(ArmResult)}) for arm in data["arms"]]
        comparisons = [Comparison(**{f.name: c[f.name] for f in fields(Comparison)}) for c in data["comparisons"]]
        top = {k: data[k] for k in ("workload", "num_prompts", "repeats", "device", "commit", "sampling")}
        return cls(**top, arms=arms, comparisons=comparisons)

    def table(self) -> str:
        """The arms, one row each, then one line per comparison with its verdict."""
        head = f"workload {self.workload}: {self.num_prompts} prompts, {self.repeats} repeats, on {self.device}" + (
            f", commit {self.commit[:10]}" if self.commit else ""
        )
        width = max(len("arm"), *(len(a.name) for a in self.arms))
        cols = (
            f"{'arm':<{width}}  {'out tok/s':>10}  {'total tok/s':>11}  {'TTFT p50/p90 ms':>17}  "
            f"{'TPOT p50/p90 ms':>17}  {'peak MiB':>9}  {'KV blocks':>9}  {'preempt':>7}  output check"
        )
        lines = [head, cols]
        for i, arm in enumerate(self.arms):
            d = arm.to_dict()
            cells = [
                f"{d['median_output_tokens_per_s']:>10.1f}",
                f"{d['median_total_tokens_per_s']:>11.1f}",
                f"{ms_pair(d['ttft_ms_p50'], d['ttft_ms_p90']):>17}",
                f"{ms_pair(d['tpot_ms_p50'], d['tpot_ms_p90']):>17}",
                f"{arm.peak_memory_bytes / 2**20:>9.0f}",
                f"{arm.kv_blocks:>9}",
                f"{sum(arm.preemptions):>7}",
                arm.check_label(i == 0),
            ]
            lines.append(f"{arm.name:<{width}}  " + "  ".join(cells))
        by_name = {arm.name: arm for arm in self.arms}
        few = f" (a verdict needs {MIN_REPEATS_FOR_VERDICT} repeats)" if self.repeats < MIN_REPEATS_FOR_VERDICT else ""
        for c in self.comparisons:
            ci = f"[{c.ci95[0]:.3f}, {c.ci95[1]:.3f}]" if c.ci95 else "[single repeat]"
            flag = "  (outputs disagree: not a win)" if by_name[c.arm].outputs_agree is False else ""
            lines.append(f"{c.arm} vs {c.baseline}: output tok/s x{c.ratio:.3f} {ci} -> {c.verdict}{few}{flag}")
        return "\n".join(lines)


def ms_pair(p50: float | None, p90: float | None) -> str:
    return "-" if p50 is None else f"{p50:.1f} / {p90:.1f}"
