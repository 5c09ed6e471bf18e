"""Scheduler contracts, checked by driving the scheduler as the engine does, with no model.

The kit plays the engine (``engine.py``'s step, the model aside: :mod:`minivllm.testing.scheduler_driver`,
which applies each step through the engine's own bookkeeping). Each contract runs hand-made cases, then random
workloads; a failing workload is shrunk (requests dropped, sizes halved) to the smallest that still
fails, and that is the reproduction.
"""

from __future__ import annotations

import random
from dataclasses import replace

from minivllm.testing.kit import Contract, ContractFailure
from minivllm.testing.scheduler_driver import BLOCKS, LIMITS, PREFIX, PROGRESS, Engine, Request, Scenario, Violation


def violation(name: str, options: dict, scenario: Scenario, checks: set[str]) -> Violation | None:
    engine = Engine(name, options, scenario, checks)
    try:
        engine.run()
    except Violation as v:
        return v
    except Exception as e:  # noqa: BLE001 - a crash inside the scheduler breaks the contract under test
        return Violation("crash", engine.step, f"the scheduler raised {type(e).__name__}: {e}")
    return None


def shrink(name: str, options: dict, scenario: Scenario, checks: set[str], check: str) -> tuple[Scenario, Violation]:
    """The smallest variant of a failing scenario that still fails the same check: drop requests one at a
    time, then halve prompts and max_tokens, while it keeps failing."""
    found = violation(name, options, scenario, checks)
    changed = True
    while changed:
        changed = False
        for i in range(len(scenario.requests)):
            reqs = list(scenario.requests)
            candidates = [
                reqs[:i] + reqs[i + 1 :],
                reqs[:i] + [replace(reqs[i], max_tokens=max(1, reqs[i].max_tokens // 2))] + reqs[i + 1 :],
                reqs[:i] + [replace(reqs[i], prompt_len=max(1, reqs[i].prompt_len // 2))] + reqs[i + 1 :],
            ]
            for cand in candidates:
                smaller = replace(scenario, requests=tuple(cand))
                if cand and smaller != scenario:
                    v = violation(name, options, smaller, checks)
                    if v is not None and v.check == check:
                        scenario, found, changed = smaller, v, True
                        break
            if changed:
                break
    return scenario, found


def random_scenario(rng: random.Random, num_requests: int, aborts: bool) -> Scenario:
    block_size = 16
    requests = []
    for _ in range(num_requests):
        prompt_len = rng.randint(1, 120)
        requests.append(
            Request(
                prompt_len,
                rng.randint(1, 24),
                arrival=rng.randint(0, 12),
                abort=rng.randint(1, 40) if aborts and rng.random() < 0.25 else None,
                group=rng.randint(0, 2),
                prefix=rng.choice([0, 0, 16, 32, 48]),
            )
        )
    return Scenario(
        tuple(requests),
        num_blocks=rng.randint(6, 24),
        block_size=block_size,
        max_num_batched_tokens=rng.choice([16, 32, 48, 64, 128, 256]),
        max_num_seqs=rng.randint(1, 6),
        async_scheduling=rng.random() < 0.5,
    )


def scenario_contract(name: str, summary: str, checks: set[str], cases: list[Scenario], aborts: bool) -> Contract:
    def run(plugin: str, options: dict) -> None:
        rng = random.Random(0)
        randoms = [random_scenario(rng, n, aborts) for n in (2, 4, 8, 8, 16, 16, 32)]
        for scenario in cases + randoms:
            v = violation(plugin, options, scenario, checks)
            if v is not None:
                small, v = shrink(plugin, options, scenario, checks, v.check)
                raise ContractFailure(name, str(v), small.describe(plugin, options))

    return Contract("scheduler", name, summary, run)


def long_prompts(plugin: str, options: dict) -> None:
    """A prompt longer than the token budget is refused by check_request or scheduled within the budget
    until it finishes; a request that could never fit in the whole KV cache is refused up front."""
    cache = Scenario((Request(100, 60),), num_blocks=8, max_num_batched_tokens=256, max_num_seqs=4)
    sched = Engine(plugin, options, cache, set()).scheduler
    try:
        sched.check_request(100, 160)  # 10 blocks of 16 into a cache of 8
    except ValueError:
        pass
    else:
        raise ContractFailure(
            "long_prompts",
            "check_request accepted a request of up to 160 tokens (10 blocks) into "
            "a KV cache of 8 blocks: it could never finish",
            cache.describe(plugin, options),
        )
    long = Scenario((Request(100, 4), Request(10, 8)), num_blocks=32, max_num_batched_tokens=32, max_num_seqs=4)
    v = violation(plugin, options, long, {LIMITS, BLOCKS, PROGRESS})
    if v is not None:
        raise ContractFailure(
            "long_prompts",
            "a prompt longer than max_num_batched_tokens, accepted by check_request, "
            f"must be scheduled within the budget until it finishes; {v}",
            long.describe(plugin, options),
        )


BUDGET = Scenario(
    (Request(20, 3), Request(20, 3), Request(20, 3), Request(5, 3)),
    num_blocks=16,
    max_num_batched_tokens=32,
    max_num_seqs=2,
)
FINISH = Scenario((Request(20, 2),), num_blocks=16, max_num_batched_tokens=64, max_num_seqs=4)
ABORT = Scenario(
    (Request(20, 8, abort=2), Request(20, 8, abort=1), Request(40, 8, arrival=1, abort=1)),
    num_blocks=16,
    max_num_batched_tokens=32,
    max_num_seqs=1,
)
# the second request is preempted with 48 tokens and resumes with only 32 of them cached: 17 to recompute
PREEMPT = Scenario((Request(16, 40), Request(16, 40)), num_blocks=6, max_num_batched_tokens=16, max_num_seqs=4)
HITS = Scenario(
    (Request(40, 1, group=1, prefix=40), Request(45, 2, arrival=3, group=1, prefix=40)),
    num_blocks=16,
    max_num_batched_tokens=64,
    max_num_seqs=4,
)

CONTRACTS = [
    scenario_contract(
        "limits",
        "the token budget (max_num_batched_tokens) and the seats (max_num_seqs) are never exceeded",
        {LIMITS},
        [BUDGET, PREEMPT],
        aborts=False,
    ),
    scenario_contract(
        "blocks",
        "every KV block comes back on finish, abort and preemption; nothing leaks",
        {BLOCKS},
        [FINISH, ABORT, PREEMPT],
        aborts=True,
    ),
    scenario_contract(
        "progress",
        "a batch is never empty while work is unfinished, and every accepted request finishes",
        {PROGRESS},
        [PREEMPT],
        aborts=True,
    ),
    scenario_contract(
        "prefix_hits", "prefix-cache hits are counted as computed, not recomputed", {PREFIX}, [HITS], aborts=False
    ),
    Contract(
        "scheduler",
        "long_prompts",
        "a prompt over the token budget is handled or refused up front; a request "
        "larger than the KV cache is refused up front",
        long_prompts,
    ),
]
