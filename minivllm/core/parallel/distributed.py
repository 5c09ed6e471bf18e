"""Process groups for tensor parallelism, on torch.distributed.

Every engine builds its own groups on a private store (no ``init_process_group``, so nothing global):
two engines with tensor parallelism can live in one process, and the user's own default group is
left alone. Each rank holds two groups:

- ``tp``: the model's collectives (all-reduce, all-gather); NCCL on CUDA, gloo on the CPU.
- ``control``: gloo, rank 0's per-step commands to the other ranks (pickled, broadcast).

Ranks meet either on a store that rank 0 opens on a free port (the engine spawns the other ranks on
this host), or torchrun-style through ``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE``/``RANK``.
"""

from __future__ import annotations

import itertools
import os
import pickle
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from minivllm.core.model_spec import ModelSpec
from minivllm.core.parallel.tensor_parallel import TensorParallel

# How long a collective may wait for a rank that is alive but stuck (a dead rank fails at once: its
# sockets close). Workers wait for rank 0's next command without limit: an idle engine is no error.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
IDLE_TIMEOUT = timedelta(days=365)

_torchrun_engines = itertools.count()  # engines of one torchrun job are built in the same order on every rank


def check_tensor_parallel(spec: ModelSpec, tp: int, device: torch.device) -> None:
    """Raise ValueError if the model cannot be split over ``tp`` ranks on ``device``."""
    spec.check_tensor_parallel(tp)
    if device.type == "cuda" and launched_by_torchrun() is None and tp > torch.cuda.device_count():
        raise ValueError(f"tensor_parallel_size={tp} exceeds the {torch.cuda.device_count()} visible CUDA devices")


@dataclass(frozen=True)
class TorchrunEnv:
    rank: int
    world_size: int
    local_rank: int


def launched_by_torchrun() -> TorchrunEnv | None:
    """This process's place in a torchrun-style launch (``RANK`` and ``WORLD_SIZE`` set), or None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    return TorchrunEnv(rank, int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", rank)))


def open_store(rank: int, world_size: int, port: int | None = None) -> dist.Store:
    """Rank 0 of a local launch opens a store on a free port (``port=None``; read it back from
    ``store.port``) and the spawned ranks join it; a torchrun launch meets through ``env://``."""
    if launched_by_torchrun() is not None:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=COLLECTIVE_TIMEOUT))
        return dist.PrefixStore(f"minivllm/{next(_torchrun_engines)}", store)
    if rank == 0:
        return dist.TCPStore(
            "127.0.0.1", 0, world_size, is_master=True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False
        )
    return dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=COLLECTIVE_TIMEOUT)


@dataclass
class Groups:
    tp: TensorParallel
    control: dist.ProcessGroupGloo


def init_groups(store: dist.Store, rank: int, world_size: int, device: torch.device) -> Groups:
    """Build this rank's groups; every rank calls it at the same time (each one waits for the others)."""
    control = _gloo(dist.PrefixStore("control", store), rank, world_size, COLLECTIVE_TIMEOUT)
    if rank > 0:
        control.set_timeout(IDLE_TIMEOUT)  # after connecting: only the wait for commands is unbounded
    tp_store = dist.PrefixStore("tp", store)
    if device.type == "cuda":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = COLLECTIVE_TIMEOUT
        group = dist.ProcessGroupNCCL(tp_store, rank, world_size, options)
    else:
        group = _gloo(tp_store, rank, world_size, COLLECTIVE_TIMEOUT)
    return Groups(TensorParallel(rank, world_size, group), control)


def _gloo(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> dist.ProcessGroupGloo:
    """A gloo group; on one host its sockets use the loopback interface (the host name need not resolve);
    under torchrun, gloo's default (the host name's address, or ``GLOO_SOCKET_IFNAME``)."""
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    if launched_by_torchrun() is None:
        options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    else:
        options._devices = [dist.ProcessGroupGloo.create_default_device()]
    return dist.ProcessGroupGloo(store, rank, world_size, options)


# Commands travel in one broadcast of this many bytes (8 for the length, then the pickle); a longer
# pickle sends its rest in a second broadcast. One round trip per step for all but the largest batches.
COMMAND_BYTES = 16384


def send_command(control, command: object) -> None:
    """Rank 0: broadcast one picklable command to the other ranks."""
    data = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
    head = torch.zeros(COMMAND_BYTES, dtype=torch.uint8)
    head[:8].view(torch.int64)[0] = len(data)
    inline = min(len(data), COMMAND_BYTES - 8)
    head[8 : 8 + inline] = torch.frombuffer(bytearray(data[:inline]), dtype=torch.uint8)
    control.broadcast(head, 0).wait()
    if len(data) > inline:
        control.broadcast(torch.frombuffer(bytearray(data[inline:]), dtype=torch.uint8), 0).wait()


def recv_command(control) -> object:
    """Ranks 1..N-1: wait for rank 0's next command."""
    head = torch.empty(COMMAND_BYTES, dtype=torch.uint8)
    control.broadcast(head, 0).wait()
    size = int(head[:8].view(torch.int64)[0])
    data = head[8 : 8 + size].numpy().tobytes()
    if size > len(data):
        rest = torch.empty(size - len(data), dtype=torch.uint8)
        control.broadcast(rest, 0).wait()
        data += rest.numpy().tobytes()
    return pickle.loads(data)


def all_reduce_min(control, value: int) -> int:
    """The smallest of every rank's ``value`` (e.g. how many KV blocks fit on every rank)."""
    t = torch.tensor([value], dtype=torch.int64)
    control.allreduce([t], dist.ReduceOp.MIN).wait()
    return int(t)
