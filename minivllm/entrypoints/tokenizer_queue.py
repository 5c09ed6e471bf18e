"""The server's queue for the engine's one tokenizer thread, shortest job first. Tokenizing takes time
in proportion to a prompt's characters (a 1M-character prompt: about a second here), and the thread
runs one job at a time; in arrival order, a short prompt behind a client's many long ones would wait
for all of them. Here each prompt is one job, and when the thread is free the shortest waiting job goes
next, so a prompt waits for at most the one job in progress (at most ``max_prompt_chars``) plus the
shorter ones. The characters waiting, all requests together, are bounded: past ``max_chars`` a request
is refused with a 503 at once rather than queued (unless it is short). (A steady stream of shorter
prompts can hold a long one back: the price of keeping short ones quick.)"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from minivllm.entrypoints.async_llm import AsyncLLM
from minivllm.entrypoints.errors import APIError

SHORT_CHARS = 4096  # a request this short is never refused: shortest first, it waits for one job at most


class TokenizerQueue:
    """Called on the event loop by the routes; jobs run on ``engine``'s tokenizer thread."""

    def __init__(self, engine: AsyncLLM, max_chars: int):
        self.engine, self.max_chars = engine, max_chars
        self._waiting: list[tuple[int, int, asyncio.Future]] = []  # (characters, arrival, turn) heap
        self._order = itertools.count()
        self._busy = False  # a job holds the thread
        self.queued_chars = 0  # of the jobs waiting or running

    async def map(self, fn: Callable, items: list, sizes: list[int]) -> list:
        """``[fn(item) for item in items]``, each a job of ``sizes[i]`` characters; an APIError (503) if
        they do not fit the queue (nothing is queued then)."""
        total = sum(sizes)
        if total > SHORT_CHARS and self.queued_chars and self.queued_chars + total > self.max_chars:
            raise APIError(
                503,
                f"the server is busy tokenizing {self.queued_chars} characters, and this request "
                f"would pass the limit of {self.max_chars}: retry later",
            )
        self.queued_chars += total
        try:
            results = []
            for item, size in zip(items, sizes):
                results.append(await self._run(size, fn, item))
                self.queued_chars -= size
                total -= size
            return results
        finally:
            self.queued_chars -= total

    async def _run(self, size: int, fn: Callable, item):
        if self._busy:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (size, next(self._order), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # given the thread as it was cancelled: pass it on
                    self._next()
                turn.cancel()  # skipped once it reaches the head
                raise
        self._busy = True
        try:
            return await self.engine.tokenize(fn, item)
        finally:
            self._next()

    def _next(self) -> None:
        """Hand the thread to the shortest job waiting, if any."""
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self._busy = False
