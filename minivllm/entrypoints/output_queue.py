"""The caller's side of a request's outputs: :class:`OutputQueue`, where the engine loop's outputs for one
request wait for its caller to read them, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minivllm.entrypoints.async_llm import StreamOutput


class StreamBufferFullError(RuntimeError):
    """A request's caller left more output unread than its ``max_buffered`` allows: the request was aborted."""


class OutputQueue:
    """One request's outputs not yet read by its caller, on the caller's event loop (the loop thread only
    hands them over, in ``async_llm._deliver``). With ``max_buffered``, it holds at most that many output
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
                f"unread, more than the limit of {self.max_buffered}; the request was aborted")
        self.queue.put_nowait(item)

    async def get(self) -> StreamOutput | BaseException:
        item = await self.queue.get()
        if not isinstance(item, BaseException):
            self.buffered -= len(item.token_ids) * self.weight
        return item
