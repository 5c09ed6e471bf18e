"""The engine core: the loop that owns an :class:`LLMEngine` and steps it, behind one IPC channel.

A server's API process (HTTP, validation, tokenising, detokenising, streaming: see ``async_llm.py``) and the
engine's host work (scheduling, preparing inputs, bookkeeping) would otherwise share one interpreter lock;
so the core runs in a process of its own (spawned, CUDA-safe), as vLLM's engine core does. With tensor
parallelism that process is rank 0 and starts the other ranks itself (``core/parallel/executor.py``). The core can
also run on a thread of the API process (``AsyncLLM(engine_process=False)``): the same loop, the same
channel, only the place differs.

The channel is a ``multiprocessing`` pipe of pickled messages (chosen by measurement against pyzmq and
msgspec: ``benchmarks/ipc.py``, RESULTS.md). Requests and aborts come in; ONE message goes out per engine
step, with every sequence's new token (and logprobs) and the queue and KV-cache figures. The core knows no
text: stop strings and detokenising are the API process's business (it aborts a sequence that a stop
string ends). Messages, each a tuple:

- in: ``("add", num, prompt_token_ids, [(params, stop_token_ids)] per completion)``, ``("abort", num,
  index)`` (index -1: every completion of request ``num``), ``("abort_all",)``, ``("close",)``.
- out: first ``("ready", info)`` or ``("failed", traceback)``; then ``(outputs, num_sampled, stats)`` where
  each output is ``(num, index, token | None, logprobs | None, finish_reason | None, stop_reason, error)``.

The core ends on ``close`` or when the pipe's other end is gone (the API process died): it never outlives
its client.
"""

from __future__ import annotations

import logging
import pickle
import signal
import traceback
from multiprocessing.connection import Connection

import torch

from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.sequence import Sequence

logger = logging.getLogger(__name__)


def send(conn: Connection, message) -> None:
    """The channel's encoding, both ways."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv(conn: Connection):
    return pickle.loads(conn.recv_bytes())


def run_engine_core(config: EngineConfig, conn: Connection, engine: LLMEngine | None = None) -> None:
    """The engine process's entry point: load the engine, say ready, then serve until closed. On a thread,
    ``engine`` comes loaded: built on the thread that owns torch's thread pool (one built on a new thread ran
    its steps several times slower on a busy 2-core CPU)."""
    if engine is None:  # a process of its own
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the API process, which drives
        if config.torch_device.type == "cpu":  # leave the API process a core: torch's threads wait on each other
            torch.set_num_threads(max(1, torch.get_num_threads() - 1))
        try:
            engine = LLMEngine(config)
        except BaseException:
            send(conn, ("failed", traceback.format_exc()))
            conn.close()
            return
    try:
        info = {
            "max_model_len": engine.max_model_len,
            "vocab_size": engine.vocab_size,
            "eos_token_ids": set(engine.eos_token_ids),
            "num_blocks": engine.allocator.num_blocks,
        }
        send(conn, ("ready", info))
        EngineCore(engine, conn).run()
    except (EOFError, OSError):
        pass  # the API process is gone: nobody to serve
    finally:
        engine.close()
        conn.close()


class EngineCore:
    """Owns the engine; only :meth:`run`'s thread touches it."""

    def __init__(self, engine: LLMEngine, conn: Connection):
        self.engine, self.conn = engine, conn
        self.requests: dict[int, list[Sequence]] = {}  # request number -> its completions
        self.owners: dict[int, tuple[int, int]] = {}  # seq id -> (request number, index)
        self.outputs: list[tuple] = []
        self.closing = False

    def run(self) -> None:
        while not self.closing:
            changed = self._receive(block=not self.engine.has_unfinished())
            num_sampled = 0
            if self.engine.has_unfinished() and not self.closing:
                num_sampled = self._step()
            if self.outputs or changed or num_sampled:
                send(self.conn, (self.outputs, num_sampled, self._stats()))
                self.outputs = []

    def _receive(self, block: bool) -> bool:
        """Handle every message waiting (with ``block``, wait for one first). Whether any came."""
        came = False
        while self.conn.poll(None if block and not came else 0):
            came = True
            kind, *args = recv(self.conn)
            if kind == "add":
                self._add(*args)
            elif kind == "abort":
                self._abort(*args)
            elif kind == "abort_all":
                for num in list(self.requests):
                    self._abort(num, -1)
            else:  # "close"
                self.closing = True
                return True
        return came

    def _add(self, num: int, token_ids: list[int], completions: list) -> None:
        seqs = []
        for index, (params, stop_token_ids) in enumerate(completions):
            seq = Sequence(token_ids, params)  # validated by the API process (core/requests.py)
            seq.stop_token_ids = stop_token_ids
            self.owners[seq.seq_id] = (num, index)
            seqs.append(seq)
            self.engine.add(seq)
        self.requests[num] = seqs

    def _abort(self, num: int, index: int) -> None:
        seqs = self.requests.get(num)
        if seqs is None:
            return  # finished already: its end is on its way
        for i, seq in enumerate(seqs):
            if (index == -1 or i == index) and not seq.is_finished:
                self.engine.abort(seq)
                self._output(seq, None)

    def _step(self) -> int:
        try:
            updated = self.engine.step()
        except Exception as e:  # the engine could not tell whose request failed the step: fail them all
            logger.exception("engine step failed; failing the running requests")
            for seqs in self.requests.values():
                for seq in seqs:
                    if not seq.is_finished:
                        self.engine.abort(seq)
                        seq.finish_reason, seq.error = "error", f"{type(e).__name__}: {e}"
                        self._output(seq, None)
            return 0
        for seq in updated:
            self._output(seq, None if seq.finish_reason == "error" else seq.token_ids[-1])
        return len(updated)

    def _output(self, seq: Sequence, token: int | None) -> None:
        num, index = self.owners[seq.seq_id]
        logprobs = seq.logprobs[-1] if token is not None and seq.params.logprobs is not None else None
        self.outputs.append((num, index, token, logprobs, seq.finish_reason, seq.stop_reason, seq.error))
        if seq.is_finished or seq.finish_reason == "error":
            del self.owners[seq.seq_id]
            seqs = self.requests[num]
            if all(s.seq_id not in self.owners for s in seqs):
                del self.requests[num]

    def _stats(self) -> tuple[int, int, int, int]:
        scheduler, allocator = self.engine.scheduler, self.engine.allocator
        return (
            len(scheduler.running),
            len(scheduler.waiting),
            allocator.num_blocks - allocator.num_free_blocks,
            allocator.num_blocks,
        )
