"""The async engine: ``async for out in engine.generate(prompt, params, request_id)``.

One background thread owns the :class:`LLMEngine` and steps it while requests are unfinished, so
requests that arrive while others run join the next step's batch (continuous batching). Other threads
never touch the engine: they validate a request (read-only), then hand it, or an abort, to the loop
through an inbox; the loop sends each step's outputs back to the asyncio loop that asked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.interfaces import TokenLogprobs
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.entrypoints.metrics import EngineMetrics
from minivllm.entrypoints.outputs import releasable_text

logger = logging.getLogger(__name__)


@dataclass
class StreamOutput:
    """What one completion of a request gained in one step."""

    request_id: str
    index: int  # which of the request's n completions
    text: str  # new text (never a split character, never the start of a stop string that will be cut)
    token_ids: list[int]  # new token ids
    logprobs: list[TokenLogprobs]  # of the new tokens, when the request asked for logprobs
    finish_reason: str | None  # "stop", "length" or "abort" once this completion ends
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_output_tokens: int  # of this completion so far
    finished: bool  # every completion of the request has ended


@dataclass
class _Request:
    request_id: str
    seqs: list[Sequence]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float = field(default_factory=time.monotonic)
    sent_chars: dict[int, int] = field(default_factory=dict)  # seq id -> characters of text sent
    sent_tokens: dict[int, int] = field(default_factory=dict)  # seq id -> tokens sent
    first_token_seen: bool = False


class AsyncLLM:
    def __init__(self, model: str, **kwargs):
        self.config = EngineConfig(model=model, **kwargs)
        self.engine = LLMEngine(self.config)
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self.metrics = EngineMetrics()
        self._requests: dict[str, _Request] = {}  # owned by the loop thread
        self._owners: dict[int, str] = {}  # seq id -> request id; owned by the loop thread
        self._outbox: dict[asyncio.AbstractEventLoop, list] = {}  # outputs not yet handed over, per event loop
        self._inbox: list[tuple[str, object]] = []  # ("add", _Request) or ("abort", request_id)
        self._active: set[str] = set()  # ids of requests not yet finished; guarded by the lock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="minivllm-engine", daemon=True)
        self._thread.start()

    # --- the caller's side (any thread, usually the asyncio loop's) ------------------------------

    def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str,
                 ) -> AsyncIterator[StreamOutput]:
        """Queue a request and return an async iterator of its outputs as the engine produces them; call
        it from a running event loop and iterate what it returns. Raises ValueError at once for a bad
        request (nothing queued). Leaving the iteration early (a client gone, a cancelled task) aborts
        the request and frees its KV blocks."""
        if self._stopped:
            raise RuntimeError("the engine is closed")
        token_ids = self.encode(prompt)
        seqs = self.engine.make_sequences(token_ids, params, detokenize=self.tokenizer is not None)
        request = _Request(request_id, seqs, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request_id in self._active:
                raise ValueError(f"request id {request_id!r} is already running")
            self._active.add(request_id)
        self._post("add", request)
        return self._outputs(request)

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

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this checkpoint has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def abort(self, request_id: str) -> None:
        """Stop a request; the loop frees its KV blocks before its next step. Unknown ids are ignored."""
        self._post("abort", request_id)

    def stats(self) -> dict:
        """Queue lengths and KV-cache use (read without the loop's lock: each value is one read)."""
        scheduler, allocator = self.engine.scheduler, self.engine.allocator
        return {"running": len(scheduler.running), "waiting": len(scheduler.waiting),
                "kv_used": allocator.num_blocks - allocator.num_free_blocks, "kv_total": allocator.num_blocks}

    def close(self) -> None:
        """Stop the loop (requests still running get an error) and the engine. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join()
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
            self.metrics.record_step(len(updated), now)
            by_request: dict[str, list[Sequence]] = {}
            for seq in updated:
                by_request.setdefault(self._owners[seq.seq_id], []).append(seq)
            for request_id, seqs in by_request.items():
                request = self._requests[request_id]
                failed = next((seq for seq in seqs if seq.finish_reason == "error"), None)
                if failed is not None:  # this request made a step fail (the others in it went on)
                    self._fail(request, RuntimeError(failed.error))
                else:
                    self._emit(request, seqs, now)
            self._flush()
        self._fail_all(RuntimeError("the engine was closed"))

    def _drain_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for kind, item in inbox:
            if kind == "add":
                self._requests[item.request_id] = item
                for seq in item.seqs:
                    self._owners[seq.seq_id] = item.request_id
                    self.engine.add(seq)
                self.metrics.prompt_tokens += item.seqs[0].num_prompt_tokens
            elif (request := self._requests.get(item)) is not None:
                for seq in request.seqs:
                    self.engine.abort(seq)
                self.metrics.requests_aborted += 1
                self._emit(request, [s for s in request.seqs if s.finish_reason == "abort"], time.monotonic())

    def _emit(self, request: _Request, seqs: list[Sequence], now: float) -> None:
        """Send what ``seqs`` of ``request`` gained; forget the request once all its sequences ended."""
        if not request.first_token_seen and any(seq.num_output_tokens for seq in seqs):
            request.first_token_seen = True
            self.metrics.record_first_token(now - request.arrival)
        finished = all(seq.is_finished for seq in request.seqs)
        for seq in seqs:
            index = request.seqs.index(seq)
            text = releasable_text(seq) if seq.detokenizer is not None else ""
            chars, tokens = request.sent_chars.get(seq.seq_id, 0), request.sent_tokens.get(seq.seq_id, 0)
            request.sent_chars[seq.seq_id], request.sent_tokens[seq.seq_id] = len(text), seq.num_output_tokens
            out = StreamOutput(
                request_id=request.request_id, index=index, text=text[chars:],
                token_ids=seq.token_ids[seq.num_prompt_tokens + tokens :], logprobs=seq.logprobs[tokens:],
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
                num_prompt_tokens=seq.num_prompt_tokens, num_output_tokens=seq.num_output_tokens,
                finished=finished and seq is seqs[-1],
            )
            self._outbox.setdefault(request.loop, []).append((request.queue, out))
        if finished:
            self._forget(request)
            if not any(seq.finish_reason == "abort" for seq in request.seqs):
                self.metrics.requests_finished += 1

    def _fail(self, request: _Request, error: BaseException) -> None:
        """End the request with ``error``, raised by its iterator; its other sequences are aborted."""
        for seq in request.seqs:
            self.engine.abort(seq)
        self._outbox.setdefault(request.loop, []).append((request.queue, error))
        self._forget(request)

    def _fail_all(self, error: BaseException) -> None:
        for request in list(self._requests.values()):
            self._fail(request, error)
        self._flush()

    def _forget(self, request: _Request) -> None:
        del self._requests[request.request_id]
        for seq in request.seqs:
            self._owners.pop(seq.seq_id, None)
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


def _deliver(items: list[tuple[asyncio.Queue, StreamOutput | BaseException]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)
