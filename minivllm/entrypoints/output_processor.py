"""The API process's side of each engine step: :class:`OutputProcessor` turns the engine core's message
(every completion's new token) into each request's :class:`StreamOutput`, on :class:`AsyncLLM`'s receiver
thread. It detokenises incrementally and applies the stop-string rule (``core/detokenizer.py``), ending a
completion there and asking the core to abort it; it records the metrics; and it hands each step's outputs
to the event loops that asked, one wake-up per loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from minivllm.core.detokenizer import push_text
from minivllm.core.sequence import Sequence, SequenceStatus
from minivllm.entrypoints.metrics import EngineMetrics
from minivllm.entrypoints.output_queue import OutputQueue, StreamOutput
from minivllm.entrypoints.outputs import releasable_text


@dataclass
class RequestState:
    """A request's state on the receiver thread. The per-completion lists are indexed like ``seqs`` (this
    process's mirrors of the core's sequences: tokens, text, finish), so an output, a finish or an abort
    costs O(1) per completion whatever ``n`` is."""

    request_id: str
    num: int  # the request's number on the channel
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


class OutputProcessor:
    """:class:`AsyncLLM` registers each request (:meth:`add`, any thread); everything else runs on its
    receiver thread. ``abort(num, index)`` asks the core to abort completion ``index`` (-1: all) of request
    ``num``."""

    def __init__(self, metrics: EngineMetrics, abort: Callable[[int, int], None]):
        self.metrics, self.abort = metrics, abort
        self.requests: dict[int, RequestState] = {}  # by number; changed under the lock
        self.active: dict[str, int] = {}  # request id -> number, while unfinished; guarded by the lock
        self.lock = threading.Lock()
        self._outbox: dict[asyncio.AbstractEventLoop, list] = {}  # outputs not yet handed over, per event loop

    def add(self, request: RequestState) -> None:
        """Register a request (the caller holds :attr:`lock`); ValueError if its id is running already."""
        if request.request_id in self.active:
            raise ValueError(f"request id {request.request_id!r} is already running")
        self.active[request.request_id] = request.num
        self.requests[request.num] = request

    def process(self, outputs: list[tuple], num_sampled: int) -> None:
        """One step's outputs (see ``engine_core.py``); the caller then calls :meth:`flush`."""
        now, sampled = time.monotonic(), 0
        touched: dict[int, tuple[RequestState, dict[int, None]]] = {}
        for num, index, token, logprobs, finish, stop_reason, error in outputs:
            request = self.requests.get(num)
            if request is None or request.seqs[index].is_finished:
                continue  # ended here already (a stop string, a failure): what the core sent since is late
            if error is not None:  # this request made a step fail (the others in it went on)
                self.fail(request, RuntimeError(error))
                continue
            seq = request.seqs[index]
            if token is not None:
                sampled += 1
                seq.append(token)
                if logprobs is not None:
                    seq.logprobs.append(logprobs)
            if finish is not None:
                seq.status, seq.finish_reason, seq.stop_reason = SequenceStatus.FINISHED, finish, stop_reason
            if token is not None and seq.detokenizer is not None and push_text(seq, token, final=finish is not None):
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, "stop"
                self.abort(num, index)
            touched.setdefault(num, (request, {}))[1][index] = None
        if num_sampled:
            self.metrics.record_step(sampled)
        for request, indices in touched.values():
            if self.requests.get(request.num) is request:
                self.emit(request, list(indices), now)

    def emit(self, request: RequestState, indices: list[int], now: float) -> None:
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
                request_id=request.request_id,
                index=i,
                text=text[chars:],
                token_ids=seq.token_ids[seq.num_prompt_tokens + tokens :],
                logprobs=seq.logprobs[tokens:],
                finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason,
                num_prompt_tokens=seq.num_prompt_tokens,
                num_output_tokens=seq.num_output_tokens,
                finished=finished and k == len(indices) - 1,
            )
            self._outbox.setdefault(request.loop, []).append((request.queue, out))
        if finished:
            self.forget(request)

    def fail(self, request: RequestState, error: BaseException) -> None:
        """End the request with ``error``, raised by its iterator; its other completions are aborted. Those
        not ended yet count as ended with finish_reason "error"."""
        self.abort(request.num, -1)
        for i, seq in enumerate(request.seqs):
            seq.status = SequenceStatus.FINISHED
            if not request.done[i]:
                self.metrics.record_finish("error", 0.0, None)
        self._outbox.setdefault(request.loop, []).append((request.queue, error))
        self.forget(request)

    def forget(self, request: RequestState) -> None:
        with self.lock:
            del self.requests[request.num]
            del self.active[request.request_id]

    def flush(self) -> None:
        """Hand the step's outputs to their event loops: one wake-up per loop, not one per output."""
        for loop, items in self._outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                pass
        self._outbox.clear()

    def fail_all(self, error: BaseException) -> None:
        for request in list(self.requests.values()):
            self.fail(request, error)
        self.flush()


def _deliver(items: list[tuple[OutputQueue, StreamOutput | BaseException]]) -> None:
    for queue, item in items:
        queue.put(item)
