"""One API request's run: its prompts started on the engine, then answered as server-sent events or as
one JSON answer. What a run costs the event loop is bounded: a stream turns each engine step's outputs
into chunks as they come (at most ``max_stream_buffer`` tokens wait unread, see :meth:`AsyncLLM.generate`),
and a whole answer is only collected on the loop; it is built and encoded (71 MB for 128 completions of
1000 tokens with 20 logprobs each) on a worker thread, one choice per ``json.dumps``, so the loop gets the
interpreter back between choices."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from minivllm.entrypoints.async_llm import AsyncLLM, EngineClosedError, StreamOutput
from minivllm.entrypoints.errors import APIError, bad_request, error_body
from minivllm.entrypoints.output_queue import StreamBufferFullError


class RequestRun:
    """Choice ``i * n + j`` is completion ``j`` of prompt ``i``. ``logprobs`` is the number of top logprobs
    asked for (0: the sampled token's only), or None for none."""

    def __init__(
        self,
        engine: AsyncLLM,
        model: str,
        prefix: str,
        prompts: list[list[int]],
        req,
        logprobs: int | None,
        max_stream_buffer: int,
    ):
        self.engine, self.model, self.req, self.chat = engine, model, req, prefix == "chatcmpl"
        self.logprobs = logprobs
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.n = req.n
        self.streams: list[AsyncIterator[StreamOutput]] = []
        self._texts: dict[int, str] = {}  # token id -> its text, decoded once per run
        buffer = max_stream_buffer if req.stream else None  # a whole answer is read as it comes
        try:
            for i, prompt in enumerate(prompts):
                params = req.sampling_params(len(prompt), engine.max_model_len, logprobs)
                self.streams.append(engine.generate(prompt, params, f"{self.id}-{i}", max_buffered=buffer))
        except (ValueError, EngineClosedError) as e:
            for started in range(len(self.streams)):
                engine.abort(f"{self.id}-{started}")
            if isinstance(e, EngineClosedError):
                raise APIError(503, str(e)) from None
            raise bad_request(
                e,
                f"prompt {i}: " if len(prompts) > 1 else "",
                "messages" if self.chat else "prompt",
                _constraint_field(req),
            ) from None
        self.tools = req.tool_parser() if self.chat else None  # turns the text into tool_calls
        self.num_prompt_tokens = sum(len(p) for p in prompts)
        self.num_completion_tokens = 0

    async def respond(self, raw_request: Request, object_name: str) -> Response:
        """Server-sent events (the response cancels them when the client goes), or the whole answer,
        abandoned (and the requests aborted) if the client disconnects while it waits."""
        if self.req.stream:
            return StreamingResponse(self._events(), media_type="text/event-stream")
        whole = asyncio.create_task(self._whole(object_name))
        gone = asyncio.create_task(_disconnected(raw_request))
        await asyncio.wait({whole, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not whole.done():
            whole.cancel()  # its streams abort their requests
            with contextlib.suppress(asyncio.CancelledError):
                await whole
            raise APIError(499, "the client disconnected")
        if (error := whole.exception()) is not None:  # the engine loop failed (a bug, not bad input)
            raise APIError(500, str(error))
        return Response(whole.result(), media_type="application/json")

    async def _outputs(self) -> AsyncIterator[tuple[int, StreamOutput]]:
        """(choice index, output) from every prompt's stream as they come; leaving early cancels the
        consumers, whose streams then abort their requests. The queue between is short: a consumer that
        reads slowly leaves the outputs in the engine's per-request buffers, which bound them."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=len(self.streams))

        async def pump(i: int, stream: AsyncIterator[StreamOutput]):
            try:
                async for out in stream:
                    await queue.put((i * self.n + out.index, out))
            except Exception as e:
                await queue.put(e)
            await queue.put(None)

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            for _ in tasks:
                while (item := await queue.get()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    self.num_completion_tokens += len(item[1].token_ids)
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    def _usage(self) -> dict:
        return {
            "prompt_tokens": self.num_prompt_tokens,
            "completion_tokens": self.num_completion_tokens,
            "total_tokens": self.num_prompt_tokens + self.num_completion_tokens,
        }

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def _events(self) -> AsyncIterator[str]:
        num_choices = len(self.streams) * self.n
        if self.chat:  # the assistant's role first, as OpenAI does
            yield self._chunk(
                [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    for i in range(num_choices)
                ]
            )
        offsets = [0] * num_choices
        held = [""] * num_choices  # with tools: each choice's text, sent once it is known to be text or calls
        try:
            async with contextlib.aclosing(self._outputs()) as outputs:
                async for index, out in outputs:
                    choice = {
                        "index": index,
                        "logprobs": self._logprobs(out, offsets, index),
                        "finish_reason": out.finish_reason,
                        "stop_reason": out.stop_reason,
                    }
                    if self.tools is not None:
                        held[index] += out.text
                        if not out.finish_reason:
                            continue
                        choice["delta"] = self._tool_delta(held[index], choice)
                    elif self.chat:
                        choice["delta"] = {"content": out.text} if out.text or not out.finish_reason else {}
                    else:
                        choice["text"] = out.text
                    yield self._chunk([choice])
        except StreamBufferFullError as e:  # the client's fault, not the server's
            yield f"data: {json.dumps(error_body(str(e), 400, 'stream'))}\n\n"
        except Exception as e:  # headers are sent: report in the stream, as vLLM does
            yield f"data: {json.dumps(error_body(str(e), 500))}\n\n"
        if self.req.include_usage:
            yield self._chunk([], self._usage())
        yield "data: [DONE]\n\n"

    def _tool_delta(self, text: str, choice: dict) -> dict:
        """The last delta of a choice whose text may be tool calls: the calls (one delta each, arguments
        whole) with ``finish_reason="tool_calls"``, or the text."""
        content, calls = self.tools.message(text) if choice["finish_reason"] in ("stop", "length") else (text, [])
        if not calls:
            return {"content": text} if text else {}
        choice["finish_reason"] = "tool_calls"
        return {"content": content, "tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}

    async def _whole(self, object_name: str) -> bytes:
        outs: list[list[StreamOutput]] = [[] for _ in range(len(self.streams) * self.n)]
        async with contextlib.aclosing(self._outputs()) as outputs:
            async for index, out in outputs:
                outs[index].append(out)
        return await asyncio.to_thread(self._encode_whole, object_name, outs)

    def _encode_whole(self, object_name: str, outs: list[list[StreamOutput]]) -> bytes:
        """The answer as JSON, each choice encoded on its own (on a worker thread)."""
        offsets = [0] * len(outs)
        choices = []
        for i, parts in enumerate(outs):
            text = "".join(out.text for out in parts)
            choice = {
                "index": i,
                "finish_reason": parts[-1].finish_reason if parts else None,
                "stop_reason": parts[-1].stop_reason if parts else None,
                "logprobs": self._merged_logprobs(parts, offsets, i),
            }
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
                if self.tools is not None and parts and parts[-1].finish_reason in ("stop", "length"):
                    content, calls = self.tools.message(text)
                    if calls:
                        choice["message"] = {"role": "assistant", "content": content, "tool_calls": calls}
                        choice["finish_reason"] = "tool_calls"
            else:
                choice["text"] = text
            choices.append(json.dumps(choice))
        head = json.dumps({"id": self.id, "object": object_name, "created": self.created, "model": self.model})
        return f'{head[:-1]}, "choices": [{", ".join(choices)}], "usage": {json.dumps(self._usage())}}}'.encode()

    # --- logprobs in OpenAI's two formats -------------------------------------------------------

    def _merged_logprobs(self, outs: list[StreamOutput], offsets: list[int], index: int) -> dict | None:
        parts = [self._logprobs(out, offsets, index) for out in outs]
        if not parts or parts[0] is None:
            return None
        if self.chat:
            return {"content": [entry for part in parts for entry in part["content"]]}
        return {key: [v for part in parts for v in part[key]] for key in parts[0]}

    def _logprobs(self, out: StreamOutput, offsets: list[int], index: int) -> dict | None:
        if self.logprobs is None:
            return None
        token = self._token_text
        if self.chat:

            def entry(token_id: int, logprob: float) -> dict:
                text = token(token_id)
                return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

            return {
                "content": [
                    {**entry(tid, lp), "top_logprobs": [entry(t, v) for t, v in top]}
                    for tid, (lp, top) in zip(out.token_ids, out.logprobs)
                ]
            }
        tokens = [token(tid) for tid in out.token_ids]
        text_offset = []
        for text in tokens:
            text_offset.append(offsets[index])
            offsets[index] += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [lp for lp, _ in out.logprobs],
            "top_logprobs": [{token(t): v for t, v in top} for _, top in out.logprobs],
            "text_offset": text_offset,
        }

    def _token_text(self, token_id: int) -> str:
        if (text := self._texts.get(token_id)) is None:
            tokenizer = self.engine.tokenizer
            text = self._texts[token_id] = tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)
        return text


def _constraint_field(req) -> str:
    try:
        return req.constraint()[0] or "structured_outputs"
    except ValueError:
        return "structured_outputs"


async def _disconnected(raw_request: Request) -> None:
    """Return once the client has gone (the body was read already, so only a disconnect can arrive)."""
    while (await raw_request.receive())["type"] != "http.disconnect":
        pass
