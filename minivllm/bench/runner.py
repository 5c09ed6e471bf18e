"""``compare()``: run every arm in processes of its own, cross-check outputs, time interleaved repeats.

Order of work: all arms' configs are validated; each arm's cross-check process runs (validating the whole
workload on the way, so a bad request fails before any timing); then ``repeats`` rounds, each running
one timing process per arm, the order rotated every round (A B, B A, ...) so drift hits arms alike.
A process per run means a fresh allocator and CUDA context: nothing carries over between arms.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile

from tqdm.auto import tqdm

from minivllm.bench.arms import Arm, build_arms
from minivllm.bench.report import ArmResult, BenchResult, summarise_arm
from minivllm.bench.stats import compare_samples
from minivllm.bench.workloads import check_name, make_workload, short_prefix_note, tokenize
from minivllm.core.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

CHECK_PROMPTS = 16
DEFAULT_SAMPLING = {"temperature": 0.6}  # nano-vllm's bench; ignore_eos is always on


class ArmFailed(RuntimeError):
    """An arm's process exited with an error; the message carries the end of its stderr."""


def compare(
    model: str,
    arms: list[dict] | None = None,
    workload: str = "random",
    num_prompts: int | None = None,
    repeats: int = 5,
    settings: dict | None = None,
    seed: int = 0,
    max_input_len: int | None = None,
    max_output_len: int | None = None,
    sampling: dict | None = None,
    progress: bool = True,
) -> BenchResult:
    """Compare engine configurations on one workload.

    ``arms``: one dict of :class:`~minivllm.EngineConfig` fields per arm, the baseline first (None: one
    arm of the defaults); ``settings``: fields fixed for every arm; ``sampling``: SamplingParams fields of
    the timed requests (default temperature 0.6; ``max_tokens`` comes from the workload). Raises
    ValueError for a bad arm, setting or workload before anything runs, and :class:`ArmFailed` when an
    arm's process fails."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    check_name(workload)
    built = build_arms(model, arms or [{}], settings)
    for block_size in sorted({arm.config.kvcache_block_size for arm in built}):
        if note := short_prefix_note(workload, max_input_len, block_size):
            logger.warning(note)
    sampling = dict(DEFAULT_SAMPLING if sampling is None else sampling)
    if {"max_tokens", "ignore_eos"} & sampling.keys():
        raise ValueError("sampling: max_tokens comes from the workload and ignore_eos is always on")
    SamplingParams(**sampling)  # validate
    requests = load_requests(built[0], workload, num_prompts, seed, max_input_len, max_output_len)
    num_check = min(CHECK_PROMPTS, len(requests))
    with tempfile.TemporaryDirectory(prefix="minivllm-bench-") as tmp:
        workload_path = os.path.join(tmp, "workload.json")
        with open(workload_path, "w") as f:
            json.dump({"prompts": [r.prompt for r in requests], "max_tokens": [r.max_tokens for r in requests]}, f)
        common = {"workload": workload_path, "check_prompts": num_check, "sampling": sampling}
        total = len(built) * (num_check + repeats * len(requests))
        with tqdm(total=total, desc="bench", unit="req", disable=not progress, dynamic_ncols=True) as bar:
            checks = []
            for arm in built:
                bar.set_postfix_str(f"cross-check {arm.name}")
                checks.append(run_arm(arm, "check", common, tmp, bar))
            timings: dict[str, list[dict]] = {arm.name: [] for arm in built}
            for r in range(repeats):
                shift = r % len(built)
                for arm in built[shift:] + built[:shift]:
                    bar.set_postfix_str(f"repeat {r + 1}/{repeats} {arm.name}")
                    timings[arm.name].append(run_arm(arm, "time", common, tmp, bar))
    results: list[ArmResult] = [
        summarise_arm(arm.name, arm.overrides, check, timings[arm.name], checks[0]) for arm, check in zip(built, checks)
    ]
    base = results[0]
    comparisons = [
        compare_samples(base.name, a.name, a.output_tokens_per_s, base.output_tokens_per_s) for a in results[1:]
    ]
    return BenchResult(
        workload=workload,
        num_prompts=len(requests),
        repeats=repeats,
        device=checks[0]["device"],
        commit=git_commit(),
        arms=results,
        comparisons=comparisons,
        sampling=sampling,
    )


def load_requests(arm: Arm, workload: str, num_prompts, seed, max_input_len, max_output_len):
    """The workload as token ids: the vocabulary bounds synthetic ids, the tokenizer encodes file text."""
    from minivllm.core.loading.checkpoint import Checkpoint

    checkpoint = Checkpoint.open(arm.config.model, arm.config.revision, arm.config.load_format)
    requests = make_workload(
        workload, num_prompts, checkpoint.hf_config.vocab_size, seed, max_input_len, max_output_len
    )
    if any(isinstance(r.prompt, str) for r in requests):
        requests = tokenize(requests, checkpoint.load_tokenizer(arm.config.tokenizer))
    return requests


def run_arm(arm: Arm, mode: str, common: dict, tmp: str, bar) -> dict:
    """Run ``python -m minivllm.bench.worker`` for one arm; advance ``bar`` by its finished requests."""
    stem = os.path.join(tmp, f"{len(os.listdir(tmp))}-{mode}")
    with open(stem + ".spec.json", "w") as f:
        # what was set, no more: a max_model_len left at its default is capped by the model, a given one is checked
        json.dump(
            {
                **common,
                "mode": mode,
                "config": arm.config.model_dump(exclude_unset=True),
                "structured_output": arm.structured_output,
            },
            f,
        )
    with open(stem + ".stderr", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minivllm.bench.worker", stem + ".spec.json", stem + ".json"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        for line in proc.stdout:
            if line.startswith("done "):
                bar.update(int(line.split()[1]))
        code = proc.wait()
        if code:
            err.seek(0)
            tail = err.read()[-3000:]
            raise ArmFailed(f"arm {arm.name} ({mode} run) failed with exit code {code}:\n{tail}")
    with open(stem + ".json") as f:
        return json.load(f)


def git_commit() -> str | None:
    """The commit measured: ``$MINIVLLM_COMMIT`` when set (a copy of the tree sent to another machine
    may carry a stale .git), else the checkout's HEAD."""
    if os.environ.get("MINIVLLM_COMMIT"):
        return os.environ["MINIVLLM_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
