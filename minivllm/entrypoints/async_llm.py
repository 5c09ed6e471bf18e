"""The async engine: ``async for out in engine.generate(prompt, params, request_id)``.

:class:`AsyncLLM` is the API process's side of the engine core (``engine_core.py``), which owns the
:class:`LLMEngine` and steps it while requests are unfinished, so requests that arrive while others run
join the next step's batch (continuous batching). By default the core runs in a process of its own, so
its host work never waits for the API process's interpreter lock (``engine_process=False``: on a thread of
this process, the same loop and channel). Here a request is validated (``core/requests.py``) and sent to
the core; one receiver thread reads the core's one message per step, detokenises each completion's new
tokens and applies stop strings (aborting a completion one ends), records the metrics, and hands each
step's outputs to the asyncio loop that asked. Tokenizing runs on a thread of its own (:meth:`tokenize`),
so a long prompt never stalls an event loop. If the engine process dies, every request fails, ``ready``
turns False and ``on_engine_dead`` (a server's exit) is called.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from minivllm.core import plugins
from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.loading.checkpoint import Checkpoint
from minivllm.core.loading.default_model import model_id
from minivllm.core.requests import RequestFactory
from minivllm.core.sampling_params import SamplingParams
from minivllm.entrypoints.engine_core import recv, run_engine_core, send
from minivllm.entrypoints.metrics import EngineMetrics
from minivllm.entrypoints.output_processor import OutputProcessor, RequestState
from minivllm.entrypoints.output_queue import OutputQueue, StreamOutput

logger = logging.getLogger(__name__)
CLOSE_TIMEOUT = 30.0  # seconds close() waits for the engine process before killing it


class EngineClosedError(RuntimeError):
    """The engine is closed or shutting down: it takes no new request."""


class EngineDeadError(EngineClosedError):
    """The engine process died: every request failed, and no new one is taken."""


class AsyncLLM:
    def __init__(
        self,
        model: str | None = None,
        served_model_name: str | None = None,
        engine_process: bool | None = None,
        **kwargs,
    ):
        """``model`` and ``kwargs`` are ``LLM(...)``'s; ``served_model_name`` is the name clients use and the
        metrics' ``model_name`` label (default: ``model``, or "SmolLM2-135M-Instruct" for the embedded one).
        ``engine_process``: run the engine core in a process of its own rather than on a thread of this one
        (default: with CUDA; on the CPU the thread, so that a script needs no ``if __name__ == "__main__":``
        guard, which a spawned process requires; ``minivllm serve`` always uses the process, see README)."""
        self.config = EngineConfig(**kwargs) if model is None else EngineConfig(model=model, **kwargs)
        self.engine_process = self.config.torch_device.type == "cuda" if engine_process is None else engine_process
        # before the core starts loading: on a thread, it would import transformers alongside (lazy imports race)
        checkpoint = Checkpoint.open(self.config.model, self.config.revision, self.config.load_format)
        self.tokenizer = checkpoint.load_tokenizer(self.config.tokenizer)
        self._conn, core_conn = multiprocessing.Pipe()
        if self.engine_process:
            self._core = multiprocessing.get_context("spawn").Process(
                target=run_engine_core, args=(self.config, core_conn), name="minivllm-engine-core"
            )
        else:
            self._core = threading.Thread(
                target=run_engine_core,
                args=(self.config, core_conn, LLMEngine(self.config)),
                name="minivllm-engine-core",
                daemon=True,
            )
        self._core.start()
        if self.engine_process:
            core_conn.close()  # the child's now: its end closing is how a dead engine shows
        info = self._handshake()
        self.max_model_len = info["max_model_len"]
        # requests are checked here, grammars included (each process keeps its own cache of compiled ones)
        self.requests = RequestFactory(
            info["vocab_size"],
            self.max_model_len,
            self.tokenizer,
            info["eos_token_ids"],
            _scheduler_check(self.config, self.max_model_len, info["num_blocks"]),
        )
        self.served_model_name = served_model_name or model_id(self.config.model)
        self.metrics = EngineMetrics(self.served_model_name)
        self.on_engine_dead: Callable[[], None] | None = None  # called (on the receiver thread) if the core dies
        # one thread: a fast tokenizer is not safe to use from several threads at once (as vLLM's)
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minivllm-tokenizer")
        self._outputs_of = OutputProcessor(self.metrics, lambda num, index: self._send(("abort", num, index)))
        self._numbers = itertools.count()
        self._stats = (0, 0, 0, info["num_blocks"])  # the core's latest (running, waiting, kv_used, kv_total)
        self.metrics.record_state(**self.stats())
        self._accepting, self._stopped, self._dead = True, False, False  # guarded by the lock
        self._lock, self._send_lock = self._outputs_of.lock, threading.Lock()
        self._receiver = threading.Thread(target=self._receive, name="minivllm-engine-client", daemon=True)
        self._receiver.start()

    def _handshake(self) -> dict:
        try:
            while not self._conn.poll(0.5) and self._core.is_alive():
                pass
            kind, payload = recv(self._conn)
        except EOFError:
            self._core.join()
            raise RuntimeError(f"the engine process exited (code {self._core.exitcode}) before it was ready") from None
        if kind == "failed":
            self._core.join()
            raise RuntimeError(f"the engine failed to start:\n{payload}")
        return payload

    # --- the caller's side (any thread, usually the asyncio loop's) ------------------------------

    def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str, max_buffered: int | None = None
    ) -> AsyncIterator[StreamOutput]:
        """Queue a request and return an async iterator of its outputs as the engine produces them; call
        it from a running event loop and iterate what it returns. Raises ValueError at once for a bad
        request (nothing queued), and EngineClosedError once the engine is closed, dead or shutting down.
        Leaving the iteration early (a client gone, a cancelled task) aborts the request and frees its KV
        blocks. A string prompt is tokenized here, on the caller's thread: a server passes token ids from
        :meth:`tokenize` instead. With ``max_buffered``, output left unread past that many tokens (each
        counting 1 + its top logprobs) aborts the request, and the iterator raises StreamBufferFullError."""
        self._check_open()  # before any work; checked again below, where it counts
        token_ids = self.encode(prompt)
        seqs = self.requests.make_sequences(token_ids, params, detokenize=self.tokenizer is not None)
        weight = 1 + (params.logprobs or 0)
        queue = OutputQueue(max_buffered, weight, lambda: self.abort(request_id))
        request = RequestState(request_id, next(self._numbers), seqs, asyncio.get_running_loop(), queue)
        with self._lock:  # one lock with begin_shutdown: a request is either refused or aborted by it
            self._check_open()
            self._outputs_of.add(request)
            self._send(("add", request.num, token_ids, [(s.params, s.stop_token_ids) for s in seqs]))
        self.metrics.record_admission(len(token_ids))
        return self._outputs(request)

    def _check_open(self) -> None:
        if self._stopped or self._dead or not self._accepting:
            raise (
                EngineDeadError("the engine process died")
                if self._dead
                else EngineClosedError("the engine is closed" if self._stopped else "the server is shutting down")
            )

    async def _outputs(self, request: RequestState) -> AsyncIterator[StreamOutput]:
        finished = False
        try:
            while not finished:
                out = await request.queue.get()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abort(request.request_id)

    async def tokenize(self, fn: Callable, *args):
        """``fn(*args)``, a call that tokenizes (such as :meth:`encode`), run on the tokenizer thread: the
        event loop awaiting it goes on serving meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, fn, *args)

    def encode(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids (see :meth:`RequestFactory.encode`); a ValueError for what is no prompt."""
        return self.requests.encode(prompt)

    def abort(self, request_id: str) -> None:
        """Stop a request; the core frees its KV blocks before its next step. Unknown ids are ignored."""
        if (num := self._outputs_of.active.get(request_id)) is not None:
            self._send(("abort", num, -1))

    def begin_shutdown(self) -> None:
        """Refuse new requests (``generate`` raises EngineClosedError) and abort every one queued so far:
        each of their streams ends with ``finish_reason`` "abort", so a server's clients get a proper end
        before it exits. The core runs on until :meth:`close`."""
        with self._lock:
            self._accepting = False
            self._send(("abort_all",))

    @property
    def ready(self) -> bool:
        """Whether new requests are taken: the model is loaded (it is once this object exists), the engine
        alive and no shutdown begun. A server's ``/health`` answers 503 otherwise, so a router or a readiness
        probe stops sending requests to a draining replica."""
        return self._accepting and not self._stopped and not self._dead

    @property
    def dead(self) -> bool:
        """Whether the engine process died (every request failed; :meth:`close` still reaps it)."""
        return self._dead

    def stats(self) -> dict:
        """Queue lengths and KV-cache use, as of the core's latest message (sent with each step's outputs)."""
        running, waiting, kv_used, kv_total = self._stats
        return {"running": running, "waiting": waiting, "kv_used": kv_used, "kv_total": kv_total}

    def close(self) -> None:
        """Stop the core (requests still running get an error), its process, the tokenizer thread. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._send(("close",))
        self._core.join(CLOSE_TIMEOUT)
        if self._core.is_alive() and self.engine_process:
            logger.error("the engine process did not stop within %.0f s: killing it", CLOSE_TIMEOUT)
            self._core.kill()
            self._core.join()
        self._receiver.join()
        self._conn.close()
        if self.engine_process:
            self._core.close()  # its sentinel's descriptor
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)
        self.requests.close()

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                send(self._conn, message)
            except OSError:  # the core is gone; the receiver fails what is left
                pass

    # --- the receiver thread -------------------------------------------------------------------

    def _receive(self) -> None:
        try:
            while True:
                outputs, num_sampled, self._stats = recv(self._conn)
                self._outputs_of.process(outputs, num_sampled)
                self.metrics.record_state(**self.stats())  # before the outputs reach their callers
                self._outputs_of.flush()
        except (EOFError, OSError):  # the core closed its end: closed by us, or dead
            pass
        with self._lock:
            dead = self._dead = not self._stopped
        if dead:
            self._core.join(1.0)
            logger.error("the engine process died (exit code %s): failing every request", self._core.exitcode)
        error = EngineDeadError("the engine process died") if dead else EngineClosedError("the engine was closed")
        self._outputs_of.fail_all(error)
        if dead and self.on_engine_dead is not None:
            self.on_engine_dead()


def _scheduler_check(config: EngineConfig, max_model_len: int, num_blocks: int) -> Callable[[int, int], None]:
    """The configured scheduler's ``check_request``, for a cache of the core's ``num_blocks``."""
    plugins.load_plugins()
    return config.build_scheduler(max_model_len, num_blocks).check_request
