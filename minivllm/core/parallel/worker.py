"""Ranks 1..N-1 of tensor parallelism: each builds its runner, then runs the commands rank 0's
:class:`~minivllm.core.parallel.executor.MultiprocExecutor` sends until it says stop. Spawned by rank 0
(:func:`worker_main`, with a pipe whose closing stops it) or started by torchrun (:func:`run_worker`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import traceback

import torch

from minivllm.core import plugins
from minivllm.core.parallel import distributed
from minivllm.core.parallel.batch_sync import BatchMirror
from minivllm.core.runner import ModelRunner
from minivllm.core.runner_setup import RunnerSetup


def _exit_when_closed(stop) -> None:
    """Worker watchdog: rank 0 closed the pipe, or died (its end closed with it)."""
    try:
        stop.recv()
    except EOFError:
        pass
    os._exit(0)


def worker_main(rank, world_size, port, setup, device, threads, stop, report):
    threading.Thread(target=_exit_when_closed, args=(stop,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: rank 0 handles it
    try:
        torch.set_num_threads(threads)
        run_worker(rank, world_size, port, setup, device)
    except BaseException:
        with contextlib.suppress(OSError):  # rank 0 may be gone: then nobody listens
            report.send(traceback.format_exc()[-16000:])  # short enough for the pipe's buffer: never blocks
        raise SystemExit(1) from None


def run_worker(rank, world_size, port, setup: RunnerSetup, device) -> None:
    """Rank ``rank``: build this rank's runner, then run rank 0's commands until it says stop."""
    plugins.load_plugins()  # honours MINIVLLM_PLUGINS, inherited from rank 0
    if device is not None:
        torch.cuda.set_device(device)
    store = distributed.open_store(rank, world_size, port)
    store.set(f"up/{rank}", "1")
    groups = distributed.init_groups(store, rank, world_size, setup.config.torch_device)
    runner = ModelRunner(setup, groups.tp)
    distributed.all_reduce_min(groups.control, 1)  # tell rank 0 this runner is built
    mirror = BatchMirror()
    while (command := distributed.recv_command(groups.control)) is not None:
        command.run(runner, mirror, groups.control)
