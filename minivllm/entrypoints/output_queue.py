"""The caller's side of a request's outputs: :class:`StreamOutput`, what one completion gained in one
step, and :class:`OutputQueue`, where the engine loop's outputs for one request wait, bounded, for its
caller to read them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from minivllm.core.interfaces import TokenLogprobs


@dataclass
class StreamOutput:
    """What one completion of a request gained in one step."""

    request_id: str
    index: int  # which of the request's n completions
    text: str  # new text (never a split character, never the start of a stop string that will be cut)
    token_ids: list[int]  # new token ids
    logprobs: list[TokenLogprobs]  # of the new tokens, when the request asked for logprobs
    finish_reason: str | None  # "stop", "length" or "abort" (aborted, or the server shut down) once it ends
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_output_tokens: int  # of this completion so far
    finished: bool  # every completion of the request has ended


class StreamBufferFullError(RuntimeError):
    """A request's caller left more output unread than its ``max_buffered`` allows: the request was aborted."""


class OutputQueue:
    """One request's outputs not yet read by its caller, on the caller's event loop (the loop thread only
    hands them over, in ``output_processor._deliver``). With ``max_buffered``, it holds at most that many output
    tokens, each counting 1 + its top logprobs: one more and the queue drops what it holds, aborts the
    request and leaves the reader a :class:`StreamBufferFullError`. So a caller that stops reading (an
    HTTP client that never reads its stream) costs bounded memory, and its hang-up frees little."""

    def __init__(self, max_buffered: int | None, weight: int, abort: Callable[[], None]):
        self.max_buffered, self.weight, self.abort = max_buffered, weight, abort
        self.queue: asyncio.Queue = asyncio.Queue()
        self.buffered = 0  # weighted tokens in the queue
        self.overflowed = False

    def put(self, item: StreamOutput | BaseException) -> None:
        if self.overflowed:
            return
        if not isinstance(item, BaseException):
            self.buffered += len(item.token_ids) * self.weight
        if self.max_buffered is not None and self.buffered > self.max_buffered:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.abort()
            item = StreamBufferFullError(
                f"the output was not read: {self.buffered} tokens (each counting 1 + its top logprobs) waited "
                f"unread, more than the limit of {self.max_buffered}; the request was aborted"
            )
        self.queue.put_nowait(item)

    async def get(self) -> StreamOutput | BaseException:
        item = await self.queue.get()
        if not isinstance(item, BaseException):
            self.buffered -= len(item.token_ids) * self.weight
        return item
