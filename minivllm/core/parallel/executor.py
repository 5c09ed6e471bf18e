"""Executors: where the model runs. The engine talks to an :class:`Executor` only. With
``tensor_parallel_size=1`` it is an :class:`InProcessExecutor` around one :class:`ModelRunner`; otherwise
a :class:`MultiprocExecutor` drives one runner per rank.

Rank 0 is this process. It sends every command to the other ranks over the control group, then runs it
on its own runner, so every rank runs the same forward (the layers' collectives meet). Each rank also
samples, with the same logits and seed, but only rank 0's tokens count: the other ranks keep theirs on
the device for the next step's pending tokens (see ModelRunner.prepare) and learn their values in the
next step's delta. Sampling everywhere keeps the runner's code path the same on all ranks and costs no
time, since the ranks run side by side.
"""

from __future__ import annotations

import time
import traceback
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from minivllm.core.interfaces import ScheduledBatch
from minivllm.core.parallel import distributed
from minivllm.core.parallel.batch_sync import BatchDelta, BatchEncoder, BatchMirror
from minivllm.core.parallel.worker import run_worker, worker_main
from minivllm.core.runner import ModelRunner
from minivllm.core.runner_setup import RunnerSetup
from minivllm.core.step import StepFuture
from minivllm.core.structured_output import StepMask, TokenMask


class Executor(ABC):
    """The engine calls, in this order: :meth:`num_blocks_from_memory` (when the cache is sized from
    memory), :meth:`allocate_kv_cache` once, :meth:`submit` every step, :meth:`close` at the end."""

    #: rank 0's runner, for inspection (its dtype, model, CUDA graphs); the engine never calls it directly
    runner: ModelRunner

    @property
    def block_bytes(self) -> int:
        """Bytes of K and V of one block on one rank (rank 0's share of the KV heads)."""
        return self.runner.block_bytes

    @abstractmethod
    def num_blocks_from_memory(self, max_num_seqs: int, max_model_len: int) -> int:
        """How many KV blocks every rank can hold."""

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Allocate the cache on every rank (and capture CUDA graphs)."""

    @abstractmethod
    def submit(self, batch: ScheduledBatch, mask: StepMask = None) -> StepFuture:
        """Queue one step on every rank; its future's ``result()`` gives rank 0's sampled tokens. ``mask``:
        the tokens the batch's structured-output grammars allow (every rank applies it, so all sample alike),
        or a function that makes it, which rank 0's runner calls once the forward pass is queued."""

    @abstractmethod
    def close(self) -> None:
        """Stop whatever the executor started (idempotent)."""


def create_executor(setup: RunnerSetup) -> Executor:
    """Validate the tensor-parallel layout, then start the ranks. Under torchrun, ranks other than 0
    serve rank 0 here and exit the process when it closes."""
    config = setup.config
    tp = config.tensor_parallel_size
    distributed.check_tensor_parallel(setup.spec, tp, config.torch_device)
    if tp == 1:
        return InProcessExecutor(ModelRunner(setup))
    launch = distributed.launched_by_torchrun()
    if launch is not None:
        if launch.world_size != tp:
            raise ValueError(f"tensor_parallel_size={tp} but torchrun started WORLD_SIZE={launch.world_size} ranks")
        if launch.rank != 0:
            device = launch.local_rank if config.torch_device.type == "cuda" else None
            run_worker(launch.rank, tp, None, setup, device)
            raise SystemExit(0)
    return MultiprocExecutor(setup)


class InProcessExecutor(Executor):
    """One runner in this process."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner

    def num_blocks_from_memory(self, max_num_seqs: int, max_model_len: int) -> int:
        return self.runner.num_blocks_from_memory(max_num_seqs, max_model_len)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.runner.allocate_kv_cache(num_blocks)

    def submit(self, batch: ScheduledBatch, mask: StepMask = None) -> StepFuture:
        return self.runner.submit(batch, mask=mask)

    def close(self) -> None:
        """Nothing to stop in-process."""


class WorkerError(RuntimeError):
    """A tensor-parallel rank failed; the engine cannot go on."""


# --- the commands rank 0 sends; each runs the same way on every rank -------------------------------


@dataclass
class _MeasureKVCache:
    max_num_seqs: int
    max_model_len: int

    def run(self, runner: ModelRunner, mirror: BatchMirror | None, control) -> int:
        # every rank must agree on one count: the smallest any can hold
        return distributed.all_reduce_min(control, runner.num_blocks_from_memory(self.max_num_seqs, self.max_model_len))


@dataclass
class _AllocateKVCache:
    num_blocks: int

    def run(self, runner: ModelRunner, mirror: BatchMirror | None, control) -> None:
        runner.allocate_kv_cache(self.num_blocks)


@dataclass
class _Step:
    delta: BatchDelta
    mask: TokenMask | None
    mask_follows: bool = False  # rank 0 sends the mask by itself once its forward pass is queued

    def run(self, runner: ModelRunner, mirror: BatchMirror | None, control) -> StepFuture:
        mask = (lambda: distributed.recv_command(control)) if self.mask_follows else self.mask
        return runner.submit(mirror.apply(self.delta), fetch=False, mask=mask)


class MultiprocExecutor(Executor):
    """Rank 0's side: starts ranks 1..N-1 (or meets them under torchrun), builds rank 0's runner, and runs
    each command on every rank."""

    def __init__(self, setup: RunnerSetup):
        config = setup.config
        self.world_size = config.tensor_parallel_size
        self._failed: BaseException | None = None
        self._encoder = BatchEncoder()
        self._procs, self._stops, self._reports = [], [], []
        self._finalizer = weakref.finalize(self, _stop_workers, self._procs, self._stops)
        device = config.torch_device
        launch = distributed.launched_by_torchrun()
        self._store = distributed.open_store(0, self.world_size)  # NCCL meets on it lazily
        if launch is None:
            self._spawn(setup, self._store.port)
            self._wait_until_up()
        elif device.type == "cuda":
            torch.cuda.set_device(launch.local_rank)
        try:
            self._groups = distributed.init_groups(self._store, 0, self.world_size, device)
            self.runner = ModelRunner(setup, self._groups.tp)
            distributed.all_reduce_min(self._groups.control, 1)  # every rank has built its runner
        except BaseException as e:
            self._fail(e)

    def num_blocks_from_memory(self, max_num_seqs: int, max_model_len: int) -> int:
        return self._run(_MeasureKVCache(max_num_seqs, max_model_len))

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self._run(_AllocateKVCache(num_blocks))

    def submit(self, batch: ScheduledBatch, mask: StepMask = None) -> StepFuture:
        if not callable(mask):
            return self._run(_Step(self._encoder.encode(batch), mask), lambda: self.runner.submit(batch, mask=mask))

        def make_and_send():  # on rank 0, its forward pass queued: the other ranks wait for this in theirs
            made = mask()
            distributed.send_command(self._groups.control, made)
            return made

        return self._run(
            _Step(self._encoder.encode(batch), None, mask_follows=True),
            lambda: self.runner.submit(batch, mask=make_and_send),
        )

    def close(self) -> None:
        """Stop the other ranks (idempotent)."""
        if self._failed is None and self._finalizer.alive:
            try:
                distributed.send_command(self._groups.control, None)
            except RuntimeError:
                pass  # a rank is gone already; stopping below still works
        self._finalizer()
        for name in ("_groups", "_store"):
            self.__dict__.pop(name, None)

    # --- internals --------------------------------------------------------------------------------

    def _run(self, command, on_rank0=None):
        """Send ``command`` to the other ranks, then run it here (``on_rank0`` instead, where rank 0 has
        what the command carries in a richer form: the batch itself rather than its delta)."""
        if self._failed is not None:
            raise WorkerError("the tensor-parallel workers failed earlier; build a new LLM") from self._failed
        if not self._finalizer.alive:
            raise RuntimeError("this LLM is closed")
        try:
            distributed.send_command(self._groups.control, command)
            if on_rank0 is not None:
                return on_rank0()
            return command.run(self.runner, None, self._groups.control)  # rank 0 mirrors nothing
        except BaseException as e:
            self._fail(e)

    def _spawn(self, setup: RunnerSetup, port: int) -> None:
        ctx = torch.multiprocessing.get_context("spawn")
        devices = [None] * self.world_size
        if setup.config.torch_device.type == "cuda":  # rank 0 keeps the current device; the others take the rest
            current = torch.cuda.current_device()
            devices = [current] + [d for d in range(torch.cuda.device_count()) if d != current]
        threads = max(1, torch.get_num_threads() // self.world_size)
        for rank in range(1, self.world_size):
            stop_r, stop_w = ctx.Pipe(duplex=False)
            report_r, report_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=worker_main,
                name=f"minivllm-tp{rank}",
                daemon=True,
                args=(rank, self.world_size, port, setup, devices[rank], threads, stop_r, report_w),
            )
            proc.start()
            stop_r.close()
            report_w.close()
            self._procs.append(proc)
            self._stops.append(stop_w)
            self._reports.append(report_r)

    def _wait_until_up(self) -> None:
        """Wait until every worker joined the store, failing fast if one dies first."""
        keys = [f"up/{rank}" for rank in range(1, self.world_size)]
        deadline = time.monotonic() + distributed.COLLECTIVE_TIMEOUT.total_seconds()
        while not self._store.check(keys):
            if any(not p.is_alive() for p in self._procs) or time.monotonic() > deadline:
                self._fail(RuntimeError("a tensor-parallel worker did not start"))
            time.sleep(0.01)

    def _fail(self, error: BaseException):
        """Stop everything and raise, with the workers' own tracebacks when they sent one."""
        self._failed = error
        reports = []
        deadline = time.monotonic() + 2.0  # a failing worker reports, then exits
        for rank, (proc, report) in enumerate(zip(self._procs, self._reports), start=1):
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if message := _read_report(report):
                reports.append(f"rank {rank}:\n{message}")
            elif not proc.is_alive() and proc.exitcode:
                reports.append(f"rank {rank} exited with code {proc.exitcode}")
        self._finalizer()
        # drop the groups now, not whenever the garbage collector breaks the cycle through the traceback:
        # the frames of the collectives and the model (finished) hold them
        traceback.clear_frames(error.__traceback__)
        for name in ("_groups", "runner", "_store"):
            self.__dict__.pop(name, None)
        if reports and isinstance(error, RuntimeError):  # what a collective raises when a peer is gone
            raise WorkerError("tensor-parallel worker failed:\n" + "\n".join(reports)) from error
        raise error  # rank 0's own error (the other ranks usually raised the same)


def _read_report(report) -> str | None:
    try:
        return report.recv() if report.poll() else None
    except EOFError:  # the worker died without a word
        return None


def _stop_workers(procs, stops) -> None:
    """Closing a worker's stop pipe makes it exit (see :func:`_exit_when_closed`); kill stragglers."""
    for stop in stops:
        stop.close()
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
