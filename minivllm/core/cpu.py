"""What the CPU path reads from the machine: whether it computes bfloat16 natively, and how many threads it
should run.

**Threads.** torch's intra-op threads wait for each other at the end of every op. A 135M model runs
hundreds of small ops per token, so when another process holds one of the cores, every op waits for the
thread that shares that core to be scheduled: on the 2-core machine with the other core busy, torch's
default (one thread per core) gave 0.6 tok/s against 9.6 with one thread (benchmarks/RESULTS.md). So when
the user chose nothing, the engine runs one thread per core left idle by the rest of the machine when it
starts (:func:`choose_threads`). ``OMP_NUM_THREADS`` or ``torch.set_num_threads(n)`` before building the
engine keep the user's count (the switch that turns the rule off).
"""

from __future__ import annotations

import functools
import os
import time

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX-BF16), with which oneDNN
    runs a bf16 linear faster than a float32 one (SmolLM2's shapes on an AVX512-BF16 EPYC: 1.2x at one
    row, 2.1x at 16) instead of emulating it more slowly. Read from /proc/cpuinfo (Linux; elsewhere False)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def idle_cores(cpus: set[int], interval: float = 0.1) -> float | None:
    """How many of ``cpus`` the machine left idle over ``interval`` seconds (the sum of their idle shares),
    from /proc/stat (Linux; elsewhere None). Taken while this process waits, so it counts others' work."""

    def sample() -> dict[int, tuple[int, int]]:  # cpu -> (idle + iowait jiffies, all jiffies)
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
        return {int(r[0][3:]): (int(r[4]) + int(r[5]), sum(map(int, r[1:]))) for r in rows if int(r[0][3:]) in cpus}

    try:
        before = sample()
        time.sleep(interval)
        after = sample()
    except (OSError, ValueError, IndexError):
        return None
    shares = [(after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in after if c in before]
    return sum(shares) if shares else None


def choose_threads() -> int | None:
    """The intra-op threads the CPU path should run, or None to leave torch's as they are: the user set
    ``OMP_NUM_THREADS`` or called ``torch.set_num_threads`` (the count differs from one per usable core), or
    the machine cannot tell. Otherwise one per core idle now, at least one (see the module docstring)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() != len(cpus):
        return None
    idle = idle_cores(cpus)
    if idle is None:
        return None
    return max(1, min(len(cpus), int(idle + 0.25)))  # a core busy for under a quarter of the time counts as idle
