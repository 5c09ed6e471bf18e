"""The async engine: ``async for out in engine.generate(prompt, params, request_id)``.

One background thread owns the :class:`LLMEngine` and steps it while requests are unfinished, so
requests that arrive while others run join the next step's batch (continuous batching). Other threads
never touch the engine: they validate a request (read-only), then hand it, or an abort, to the loop
through an inbox; the loop sends each step's outputs back to the asyncio loop that asked. Tokenizing
runs on a thread of its own (:meth:`AsyncLLM.tokenize`), so a long prompt never stalls an event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.loading.default_model import model_id
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.entrypoints.metrics import EngineMetrics
from minivllm.entrypoints.output_queue import OutputQueue, StreamOutput
from minivllm.entrypoints.outputs import releasable_text

logger = logging.getLogger(__name__)


class EngineClosedError(RuntimeError):
    """The engine is closed or shutting down: it takes no new request."""


@dataclass
class _Request:
    """A request's state on the loop thread. The per-completion lists are indexed like ``seqs``, so an
    output, a finish or an abort costs O(1) per completion whatever ``n`` is."""

    request_id: str
    seqs: list[Sequence]
    loop: asyncio.AbstractEventLoop
    queue: OutputQueue
    arrival: float = field(default_factory=time.monotonic)
    sent_chars: list[int] = field(init=False)  # characters of text sent
    sent_tokens: list[int] = field(init=False)  # tokens sent
    first_token_time: list[float | None] = field(init=False)
    done: list[bool] = field(init=False)  # its end was sent (and counted)
    num_unfinished: int = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.seqs)
        self.sent_chars, self.sent_tokens, self.first_token_time = [0] * n, [0] * n, [None] * n
        self.done, self.num_unfinished = [False] * n, n


class AsyncLLM:
    def __init__(self, model: str | None = None, served_model_name: str | None = None, **kwargs):
        """``model`` and ``kwargs`` are ``LLM(...)``'s; ``served_model_name`` is the name clients use and the
        metrics' ``model_name`` label (default: ``model``, or "SmolLM2-135M-Instruct" for the embedded one)."""
        self.config = EngineConfig(**kwargs) if model is None else EngineConfig(model=model, **kwargs)
        self.engine = LLMEngine(self.config)
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self.served_model_name = served_model_name or model_id(self.config.model)
        self.metrics = EngineMetrics(self.served_model_name)
        # one thread: a fast tokenizer is not safe to use from several threads at once (as vLLM's)
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minivllm-tokenizer")
        self._requests: dict[str, _Request] = {}  # owned by the loop thread
        self._owners: dict[int, tuple[_Request, int]] = {}  # seq id -> (request, index); owned by the loop thread
        self._outbox: dict[asyncio.AbstractEventLoop, list] = {}  # outputs not yet handed over, per event loop
        # ("add", _Request), ("abort", request_id) or ("abort_all", None)
        self._inbox: list[tuple[str, object]] = []
        self._active: set[str] = set()  # ids of requests not yet finished; guarded by the lock
        self._accepting = True  # guarded by the lock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="minivllm-engine", daemon=True)
        self._thread.start()

    # --- the caller's side (any thread, usually the asyncio loop's) ------------------------------

    def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                 max_buffered: int | None = None) -> AsyncIterator[StreamOutput]:
        """Queue a request and return an async iterator of its outputs as the engine produces them; call
        it from a running event loop and iterate what it returns. Raises ValueError at once for a bad
        request (nothing queued), and EngineClosedError once the engine is closed or shutting down.
        Leaving the iteration early (a client gone, a cancelled task) aborts the request and frees its KV
        blocks. A string prompt is tokenized here, on the caller's thread: a server passes token ids from
        :meth:`tokenize` instead. With ``max_buffered``, output left unread past that many tokens (each
        counting 1 + its top logprobs) aborts the request, and the iterator raises StreamBufferFullError."""
        self._check_open()  # before any work; checked again below, where it counts
        token_ids = self.encode(prompt)
        seqs = self.engine.make_sequences(token_ids, params, detokenize=self.tokenizer is not None)
        weight = 1 + (params.logprobs or 0)
        queue = OutputQueue(max_buffered, weight, lambda: self.abort(request_id))
        request = _Request(request_id, seqs, asyncio.get_running_loop(), queue)
        with self._lock:  # one lock with begin_shutdown: a request is either refused or aborted by it
            self._check_open()
            if request_id in self._active:
                raise ValueError(f"request id {request_id!r} is already running")
            self._active.add(request_id)
            self._inbox.append(("add", request))
        self._wake.set()
        return self._outputs(request)

    def _check_open(self) -> None:
        if self._stopped or not self._accepting:
            raise EngineClosedError("the engine is closed" if self._stopped else "the server is shutting down")

    async def _outputs(self, request: _Request) -> AsyncIterator[StreamOutput]:
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
        return self.engine.encode(prompt)

    def abort(self, request_id: str) -> None:
        """Stop a request; the loop frees its KV blocks before its next step. Unknown ids are ignored."""
        self._post("abort", request_id)

    def begin_shutdown(self) -> None:
        """Refuse new requests (``generate`` raises EngineClosedError) and abort every one queued so far:
        each of their streams ends with ``finish_reason`` "abort", so a server's clients get a proper end
        before it exits. The loop runs on until :meth:`close`."""
        with self._lock:
            self._accepting = False
        self._post("abort_all", None)

    @property
    def ready(self) -> bool:
        """Whether new requests are taken: the model is loaded (it is once this object exists) and no
        shutdown has begun. A server's ``/health`` answers 503 otherwise, so a router or a readiness probe
        stops sending requests to a draining replica."""
        return self._accepting and not self._stopped

    def stats(self) -> dict:
        """Queue lengths and KV-cache use (read without the loop's lock: each value is one read)."""
        scheduler, allocator = self.engine.scheduler, self.engine.allocator
        return {"running": len(scheduler.running), "waiting": len(scheduler.waiting),
                "kv_used": allocator.num_blocks - allocator.num_free_blocks, "kv_total": allocator.num_blocks}

    def close(self) -> None:
        """Stop the loop (requests still running get an error), the tokenizer thread and the engine.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join()
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)
        self.engine.close()

    def _post(self, kind: str, item) -> None:
        with self._lock:
            self._inbox.append((kind, item))
        self._wake.set()

    # --- the loop thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped:
            self._drain_inbox()
            self._flush()
            self.metrics.record_state(**self.stats())
            if not self.engine.has_unfinished():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                updated = self.engine.step()
            except Exception as e:  # the engine could not tell whose request failed the step
                logger.exception("engine step failed; failing the running requests")
                self._fail_all(e)
                continue
            now = time.monotonic()
            self.metrics.record_step(len(updated))
            by_request: dict[str, tuple[_Request, list[int]]] = {}
            for seq in updated:
                request, index = self._owners[seq.seq_id]
                by_request.setdefault(request.request_id, (request, []))[1].append(index)
            for request, indices in by_request.values():
                failed = next((request.seqs[i] for i in indices if request.seqs[i].finish_reason == "error"), None)
                if failed is not None:  # this request made a step fail (the others in it went on)
                    self._fail(request, RuntimeError(failed.error))
                else:
                    self._emit(request, indices, now)
            self._flush()
        self._drain_inbox()  # a request queued as the loop stopped fails too, rather than waiting forever
        self._fail_all(EngineClosedError("the engine was closed"))

    def _drain_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for kind, item in inbox:
            if kind == "add":
                self._requests[item.request_id] = item
                for index, seq in enumerate(item.seqs):
                    self._owners[seq.seq_id] = (item, index)
                    self.engine.add(seq)
                self.metrics.record_admission(item.seqs[0].num_prompt_tokens)
            elif kind == "abort":
                if (request := self._requests.get(item)) is not None:
                    self._abort(request)
            else:  # "abort_all"
                for request in list(self._requests.values()):
                    self._abort(request)

    def _abort(self, request: _Request) -> None:
        for seq in request.seqs:
            self.engine.abort(seq)
        self._emit(request, [i for i, done in enumerate(request.done) if not done], time.monotonic())

    def _emit(self, request: _Request, indices: list[int], now: float) -> None:
        """Send what completions ``indices`` of ``request`` gained; forget the request once all ended."""
        for i in indices:
            seq = request.seqs[i]
            if request.first_token_time[i] is None and seq.num_output_tokens:
                request.first_token_time[i] = now
                self.metrics.record_first_token(now - request.arrival)
            if seq.is_finished and not request.done[i]:
                request.done[i] = True
                request.num_unfinished -= 1
                first = request.first_token_time[i]
                tpot = (now - first) / (seq.num_output_tokens - 1) if seq.num_output_tokens > 1 else None
                self.metrics.record_finish(seq.finish_reason, now - request.arrival, tpot)
        finished = request.num_unfinished == 0
        for k, i in enumerate(indices):
            seq = request.seqs[i]
            text = releasable_text(seq) if seq.detokenizer is not None else ""
            chars, tokens = request.sent_chars[i], request.sent_tokens[i]
            request.sent_chars[i], request.sent_tokens[i] = len(text), seq.num_output_tokens
            out = StreamOutput(
                request_id=request.request_id, index=i, text=text[chars:],
                token_ids=seq.token_ids[seq.num_prompt_tokens + tokens :], logprobs=seq.logprobs[tokens:],
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
                num_prompt_tokens=seq.num_prompt_tokens, num_output_tokens=seq.num_output_tokens,
                finished=finished and k == len(indices) - 1,
            )
            self._outbox.setdefault(request.loop, []).append((request.queue, out))
        if finished:
            self._forget(request)

    def _fail(self, request: _Request, error: BaseException) -> None:
        """End the request with ``error``, raised by its iterator; its other sequences are aborted. Its
        completions not ended yet count as ended with finish_reason "error"."""
        for i, seq in enumerate(request.seqs):
            self.engine.abort(seq)
            if not request.done[i]:
                self.metrics.record_finish("error", 0.0, None)
        self._outbox.setdefault(request.loop, []).append((request.queue, error))
        self._forget(request)

    def _fail_all(self, error: BaseException) -> None:
        for request in list(self._requests.values()):
            self._fail(request, error)
        self._flush()

    def _forget(self, request: _Request) -> None:
        del self._requests[request.request_id]
        for seq in request.seqs:
            del self._owners[seq.seq_id]
        with self._lock:
            self._active.discard(request.request_id)

    def _flush(self) -> None:
        """Hand the step's outputs to their event loops: one wake-up per loop, not one per output."""
        for loop, items in self._outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                pass
        self._outbox.clear()


def _deliver(items: list[tuple[OutputQueue, StreamOutput | BaseException]]) -> None:
    for queue, item in items:
        queue.put(item)
