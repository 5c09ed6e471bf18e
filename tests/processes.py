"""This test process's child processes, read from /proc (Linux): for tests that start processes and must
leave none behind."""

import os
import time


def proc_stat(pid) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def children() -> set[int]:
    """Live child processes of this process, from the process table, except multiprocessing's resource
    tracker (one per process, started with the first spawn, kept for the session)."""
    children = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = proc_stat(pid)
        if fields is None or fields[0] == "Z" or int(fields[1]) != os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"resource_tracker" not in f.read():
                    children.add(int(pid))
        except OSError:  # it just exited
            continue
    return children


def wait_gone(pids, timeout=10.0) -> set[int]:
    """The processes of ``pids`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left
