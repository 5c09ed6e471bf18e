"""The OpenAI-compatible HTTP server (FastAPI on uvicorn, as vLLM's): ``/v1/completions``,
``/v1/chat/completions`` (both streaming as server-sent events), ``/v1/models``, ``/health`` and
``/metrics``. Every error, bad requests and unknown routes included, is an OpenAI error body; bad
requests never reach the engine loop. :class:`ServerSettings` (``settings.py``) holds the limits, the
API key and the shutdown grace period. Importing this module needs the ``serve`` extra (FastAPI,
uvicorn, prometheus_client); nothing else in minivllm imports it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from minivllm.entrypoints.async_llm import AsyncLLM, EngineClosedError, StreamOutput
from minivllm.entrypoints.chat import chat_prompt
from minivllm.entrypoints.metrics import CONTENT_TYPE
from minivllm.entrypoints.middleware import APIKeyMiddleware, BodyLimitMiddleware
from minivllm.entrypoints.protocol import ChatCompletionRequest, CompletionRequest, describe_errors, error_body
from minivllm.entrypoints.settings import ServerSettings


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def build_app(engine: AsyncLLM, settings: ServerSettings | None = None) -> FastAPI:
    """The app serving ``engine`` under its ``served_model_name``."""
    settings = settings or ServerSettings()
    app = FastAPI(title="minivllm")
    model_name = engine.served_model_name
    created = int(time.time())
    # added inside out: the key is checked before the body is read
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key is not None:
        open_paths = frozenset({"/health", "/metrics"} if settings.public_metrics else {"/health"})
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key.get_secret_value(), open_paths=open_paths)

    def error_response(status: int, message: str, param: str | None = None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        return error_response(e.status, e.message, e.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, e: RequestValidationError):  # a body that is no JSON, or a field of the wrong type
        errors = e.errors()
        if errors and errors[0]["type"] == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {errors[0]['ctx']['error']} "
                                       f"(character {errors[0]['loc'][-1]})")
        return error_response(400, *describe_errors(errors))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):  # Starlette's and FastAPI's own refusals
        message = {404: f"no route {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}",
                   400: "the body could not be parsed: it must be JSON in UTF-8"}.get(e.status_code, str(e.detail))
        return error_response(e.status_code, message, headers=e.headers)

    @app.exception_handler(Exception)
    async def _bug(_, e: Exception):  # still logged by Starlette
        return error_response(500, f"internal error: {type(e).__name__}: {e}")

    @app.get("/health")
    async def health():  # 200 once the model is loaded (the app exists only then); 503 while draining
        return Response(status_code=200 if engine.ready else 503)

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "minivllm",
                "max_model_len": engine.max_model_len}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics():
        return Response(engine.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def check(req: CompletionRequest | ChatCompletionRequest) -> None:
        """What needs no tokenizer: the model's name, the fields minivllm lacks, the limits on n."""
        if req.model is not None and req.model != model_name:
            raise APIError(404, f"The model `{req.model}` does not exist.", "model")
        if (name := req.unsupported_field()) is not None:
            raise APIError(400, f"{name} is not supported by this server", name)
        if req.n > settings.max_n:
            raise APIError(400, f"n must be at most {settings.max_n}", "n")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request):
        check(req)
        prompts = req.prompts()
        if not prompts:
            raise APIError(400, "the prompt list is empty", "prompt")
        if len(prompts) > settings.max_prompts:
            raise APIError(400, f"at most {settings.max_prompts} prompts per request, got {len(prompts)}", "prompt")
        for i, p in enumerate(prompts):
            if isinstance(p, str) and len(p) > settings.max_prompt_chars:
                raise APIError(400, f"prompt {i} has {len(p)} characters, more than the limit of "
                                    f"{settings.max_prompt_chars}", "prompt")
        token_ids = await _tokenized(engine, lambda: [engine.encode(p) for p in prompts])
        run = _Run(engine, model_name, "cmpl", token_ids, req, req.logprobs)
        return await run.respond(raw, "text_completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        check(req)
        if req.max_completion_tokens is not None:
            req.max_tokens = req.max_completion_tokens
        messages = [m.as_template_input() for m in req.messages]
        if (chars := sum(len(m["content"]) for m in messages)) > settings.max_prompt_chars:
            raise APIError(400, f"the messages have {chars} characters, more than the limit of "
                                f"{settings.max_prompt_chars}", "messages")
        prompt = await _tokenized(engine, chat_prompt, engine.tokenizer, messages, settings.chat_template)
        run = _Run(engine, model_name, "chatcmpl", [prompt], req, req.chat_logprobs)
        return await run.respond(raw, "chat.completion")

    return app


async def _tokenized(engine: AsyncLLM, fn, *args):
    """``fn(*args)`` on the engine's tokenizer thread, a ValueError turned into a 400."""
    try:
        return await engine.tokenize(fn, *args)
    except ValueError as e:
        raise _bad_request(e) from None


def _bad_request(e: ValueError, where: str = "") -> APIError:
    """A 400 for a bad value: pydantic's errors said field by field, without the values."""
    if isinstance(e, ValidationError):
        message, param = describe_errors(e.errors())
    else:
        message, param = str(e), getattr(e, "param", None)
    return APIError(400, where + message, param)


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
        except (ValueError, EngineClosedError) as e:
            for started in range(len(self.streams)):
                engine.abort(f"{self.id}-{started}")
            if isinstance(e, EngineClosedError):
                raise APIError(503, str(e)) from None
            raise _bad_request(e, f"prompt {i}: " if len(prompts) > 1 else "") from None
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
            raise APIError(499, "the client disconnected")
        if (error := whole.exception()) is not None:  # the engine loop failed (a bug, not bad input)
            raise APIError(500, str(error))
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
            yield f"data: {json.dumps(error_body(str(e), 500))}\n\n"
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


class _Server(uvicorn.Server):
    """uvicorn's server, whose shutdown (on SIGTERM or SIGINT) first aborts every request: each stream then
    sends its last chunk (``finish_reason`` "abort") and ``[DONE]``, and each whole answer comes back with
    the text so far, instead of uvicorn waiting for every stream to run its course. What has not ended
    within ``timeout_graceful_shutdown`` is cancelled."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLM):
        super().__init__(config)
        self.engine = engine

    async def shutdown(self, sockets=None) -> None:
        self.engine.begin_shutdown()
        await super().shutdown(sockets)


def serve(engine: AsyncLLM, settings: ServerSettings | None = None, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Run the server until SIGTERM or SIGINT (shutting down within the grace period), then close the engine."""
    settings = settings or ServerSettings()
    config = uvicorn.Config(build_app(engine, settings), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=settings.shutdown_grace_period)
    # Once shut down, uvicorn raises the signal that stopped it again. SIGTERM's default action would end
    # the process there and then, the engine unclosed (tensor-parallel workers left running): make it an
    # interrupt, as SIGINT's is, and end normally.
    on_main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        _Server(config, engine).run()
    except KeyboardInterrupt:
        pass
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        engine.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt
