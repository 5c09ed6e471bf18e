"""The OpenAI-compatible HTTP server (FastAPI on uvicorn, as vLLM's): ``/v1/completions``,
``/v1/chat/completions`` (both streaming as server-sent events), ``/v1/models``, ``/health`` and
``/metrics``. Bad requests get OpenAI error bodies and never reach the engine loop. Importing this module
needs the ``serve`` extra (FastAPI, uvicorn,
prometheus_client); nothing else in minivllm imports it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from minivllm.entrypoints.async_llm import AsyncLLM, StreamOutput
from minivllm.entrypoints.chat import chat_prompt
from minivllm.entrypoints.metrics import CONTENT_TYPE
from minivllm.entrypoints.protocol import ChatCompletionRequest, CompletionRequest, error_body


class APIError(Exception):
    def __init__(self, status: int, kind: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.param = status, kind, message, param


def build_app(engine: AsyncLLM, served_model_name: str, api_key: str | None = None,
              chat_template: str | None = None):
    app = FastAPI(title="minivllm")
    created = int(time.time())

    def error_response(status: int, kind: str, message: str, param: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, kind, status, param), status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        return error_response(e.status, e.kind, e.message, e.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, e: RequestValidationError):  # malformed JSON or a field of the wrong type
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}"
                             for err in e.errors())
        return error_response(400, "BadRequestError", problems)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1") and \
                request.headers.get("authorization") != f"Bearer {api_key}":
            return error_response(401, "AuthenticationError", "invalid or missing API key")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models():
        card = {"id": served_model_name, "object": "model", "created": created, "owned_by": "minivllm",
                "max_model_len": engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics():
        return Response(engine.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def check_model(model: str | None) -> str:
        if model is not None and model != served_model_name:
            raise APIError(404, "NotFoundError", f"The model `{model}` does not exist.", "model")
        return served_model_name

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        model = check_model(req.model)
        prompts = _checked(lambda: [engine.encode(p) if isinstance(p, str) else p for p in req.prompts()])
        if not prompts:
            raise APIError(400, "BadRequestError", "the prompt list is empty", "prompt")
        run = _Run(engine, model, "cmpl", prompts, req, req.logprobs)
        return await run.respond(raw, "text_completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        model = check_model(req.model)
        if req.max_completion_tokens is not None:
            req.max_tokens = req.max_completion_tokens
        messages = [m.as_template_input() for m in req.messages]
        prompt = _checked(lambda: chat_prompt(engine.tokenizer, messages, chat_template))
        run = _Run(engine, model, "chatcmpl", [prompt], req, req.chat_logprobs)
        return await run.respond(raw, "chat.completion")

    return app


def _checked(make):
    """``make()``, a ValueError turned into a 400."""
    try:
        return make()
    except ValueError as e:
        raise APIError(400, "BadRequestError", str(e)) from None


class _Run:
    """One API request: its prompts (each with ``n`` completions) started on the engine, then answered
    whole or as server-sent events. Choice ``i * n + j`` is completion ``j`` of prompt ``i``."""

    def __init__(self, engine: AsyncLLM, model: str, prefix: str, prompts: list[list[int]], req,
                 logprobs: int | None):
        self.engine, self.model, self.req, self.chat = engine, model, req, prefix == "chatcmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.n = req.n
        self.streams: list[AsyncIterator[StreamOutput]] = []
        try:
            for i, prompt in enumerate(prompts):
                params = req.sampling_params(len(prompt), engine.max_model_len, logprobs)
                self.streams.append(engine.generate(prompt, params, f"{self.id}-{i}"))
        except ValueError as e:
            for started in range(len(self.streams)):
                engine.abort(f"{self.id}-{started}")
            raise APIError(400, "BadRequestError", f"prompt {i}: {e}" if len(prompts) > 1 else str(e)) from None
        self.num_prompt_tokens = sum(len(p) for p in prompts)
        self.num_completion_tokens = 0

    async def respond(self, raw_request: Request, object_name: str):
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
            raise APIError(499, "ClientClosedRequest", "the client disconnected")
        if (error := whole.exception()) is not None:  # the engine loop failed (a bug, not bad input)
            raise APIError(500, "InternalServerError", str(error))
        return whole.result()

    async def _outputs(self) -> AsyncIterator[tuple[int, StreamOutput]]:
        """(choice index, output) from every prompt's stream as they come; leaving early cancels the
        consumers, whose streams then abort their requests."""
        queue: asyncio.Queue = asyncio.Queue()

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
        return {"prompt_tokens": self.num_prompt_tokens, "completion_tokens": self.num_completion_tokens,
                "total_tokens": self.num_prompt_tokens + self.num_completion_tokens}

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def _events(self) -> AsyncIterator[str]:
        num_choices = len(self.streams) * self.n
        if self.chat:  # the assistant's role first, as OpenAI does
            yield self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None} for i in range(num_choices)])
        offsets = [0] * num_choices
        try:
            async with contextlib.aclosing(self._outputs()) as outputs:
                async for index, out in outputs:
                    choice = {"index": index, "logprobs": self._logprobs(out, offsets, index),
                              "finish_reason": out.finish_reason, "stop_reason": out.stop_reason}
                    if self.chat:
                        choice["delta"] = {"content": out.text} if out.text or not out.finish_reason else {}
                    else:
                        choice["text"] = out.text
                    yield self._chunk([choice])
        except Exception as e:  # headers are sent: report in the stream, as vLLM does
            yield f"data: {json.dumps(error_body(str(e), 'InternalServerError', 500))}\n\n"
        if self.req.include_usage:
            yield self._chunk([], self._usage())
        yield "data: [DONE]\n\n"

    async def _whole(self, object_name: str) -> dict:
        num_choices = len(self.streams) * self.n
        texts, reasons, stops = [""] * num_choices, [None] * num_choices, [None] * num_choices
        logprobs: list[list[StreamOutput]] = [[] for _ in range(num_choices)]
        async with contextlib.aclosing(self._outputs()) as outputs:
            async for index, out in outputs:
                texts[index] += out.text
                reasons[index], stops[index] = out.finish_reason, out.stop_reason
                logprobs[index].append(out)
        choices = []
        offsets = [0] * num_choices
        for i in range(num_choices):
            choice = {"index": i, "finish_reason": reasons[i], "stop_reason": stops[i],
                      "logprobs": self._merged_logprobs(logprobs[i], offsets, i)}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": texts[i]}
            else:
                choice["text"] = texts[i]
            choices.append(choice)
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "choices": choices, "usage": self._usage()}

    # --- logprobs in OpenAI's two formats -------------------------------------------------------

    def _merged_logprobs(self, outs: list[StreamOutput], offsets: list[int], index: int) -> dict | None:
        parts = [self._logprobs(out, offsets, index) for out in outs]
        if not parts or parts[0] is None:
            return None
        if self.chat:
            return {"content": [entry for part in parts for entry in part["content"]]}
        return {key: [v for part in parts for v in part[key]] for key in parts[0]}

    def _logprobs(self, out: StreamOutput, offsets: list[int], index: int) -> dict | None:
        if self.req.logprobs in (None, False):
            return None
        token = self._token_text
        if self.chat:
            def entry(token_id: int, logprob: float) -> dict:
                text = token(token_id)
                return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

            return {"content": [{**entry(tid, lp), "top_logprobs": [entry(t, v) for t, v in top]}
                                for tid, (lp, top) in zip(out.token_ids, out.logprobs)]}
        tokens = [token(tid) for tid in out.token_ids]
        text_offset = []
        for text in tokens:
            text_offset.append(offsets[index])
            offsets[index] += len(text)
        return {"tokens": tokens, "token_logprobs": [lp for lp, _ in out.logprobs],
                "top_logprobs": [{token(t): v for t, v in top} for _, top in out.logprobs],
                "text_offset": text_offset}

    def _token_text(self, token_id: int) -> str:
        tokenizer = self.engine.tokenizer
        return tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)


async def _disconnected(raw_request: Request) -> None:
    """Return once the client has gone (the body was read already, so only a disconnect can arrive)."""
    while (await raw_request.receive())["type"] != "http.disconnect":
        pass


def serve(engine: AsyncLLM, served_model_name: str, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, chat_template: str | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted, then close the engine."""
    import uvicorn

    app = build_app(engine, served_model_name, api_key, chat_template)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        engine.close()
