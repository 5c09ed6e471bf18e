"""The OpenAI-compatible HTTP server (FastAPI on uvicorn, as vLLM's): ``/v1/completions``,
``/v1/chat/completions`` (both streaming as server-sent events), ``/v1/models``, ``/health`` and
``/metrics``. Every error, bad requests and unknown routes included, is an OpenAI error body; bad
requests never reach the engine loop, and nothing that grows with a request's size runs on the event
loop unbounded: bodies are parsed on a thread (``request_body.py``), prompts tokenized shortest first on
the tokenizer's (``tokenizer_queue.py``), whole answers built on a worker thread and streams' unread
output bounded (``request_run.py``). :class:`ServerSettings` (``settings.py``) holds the limits, the API
key, the connection bounds (``connections.py``) and the shutdown grace period. Importing this module
needs the ``serve`` extra (FastAPI, uvicorn, prometheus_client); nothing else in minivllm imports it."""

from __future__ import annotations

import signal
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from minivllm.entrypoints.async_llm import AsyncLLM
from minivllm.entrypoints.chat import chat_prompt
from minivllm.entrypoints.connections import guarded_protocol, raise_descriptor_limit
from minivllm.entrypoints.errors import APIError, bad_request, error_body
from minivllm.entrypoints.metrics import CONTENT_TYPE
from minivllm.entrypoints.middleware import APIKeyMiddleware, BodyLimitMiddleware
from minivllm.entrypoints.protocol import ChatCompletionRequest, CompletionRequest
from minivllm.entrypoints.request_body import BodyReader
from minivllm.entrypoints.request_run import RequestRun
from minivllm.entrypoints.settings import ServerSettings
from minivllm.entrypoints.tokenizer_queue import TokenizerQueue


def build_app(engine: AsyncLLM, settings: ServerSettings | None = None) -> FastAPI:
    """The app serving ``engine`` under its ``served_model_name``."""
    settings = settings or ServerSettings()
    app = FastAPI(title="minivllm")
    model_name = engine.served_model_name
    created = int(time.time())
    bodies = BodyReader()
    tokenizing = TokenizerQueue(engine, settings.max_tokenizing_chars)
    app.router.add_event_handler("shutdown", bodies.close)
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

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):  # Starlette's and FastAPI's own refusals
        message = {
            404: f"no route {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(e.status_code, str(e.detail))
        return error_response(e.status_code, message, headers=e.headers)

    @app.exception_handler(Exception)
    async def _bug(_, e: Exception):  # still logged by Starlette
        return error_response(500, f"internal error: {type(e).__name__}: {e}")

    @app.get("/health")
    async def health():  # 200 once the model is loaded (the app exists only then); 503 while draining
        return Response(status_code=200 if engine.ready else 503)

    @app.get("/v1/models")
    async def models():
        card = {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "minivllm",
            "max_model_len": engine.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics():
        return Response(engine.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def check(req: CompletionRequest | ChatCompletionRequest, num_prompts: int) -> None:
        """What needs no tokenizer: the model's name, the fields minivllm lacks, the bounds on the work."""
        if req.model is not None and req.model != model_name:
            raise APIError(404, f"The model `{req.model}` does not exist.", "model")
        if (name := req.unsupported_field()) is not None:
            raise APIError(400, f"{name} is not supported by this server", name)
        if req.n > settings.max_n:
            raise APIError(400, f"n must be at most {settings.max_n}", "n")
        if num_prompts * req.n > settings.max_request_sequences:
            raise APIError(
                400,
                f"{num_prompts} prompts with n={req.n} make {num_prompts * req.n} sequences, more "
                f"than the limit of {settings.max_request_sequences} per request",
                "n",
            )
        stop = [req.stop] if isinstance(req.stop, str) else req.stop or []
        for name, values in (("stop", stop), ("stop_token_ids", req.stop_token_ids or [])):
            if len(values) > settings.max_stop:
                raise APIError(
                    400, f"{name} has {len(values)} entries, more than the limit of {settings.max_stop}", name
                )
        if (chars := sum(len(s) for s in stop)) > settings.max_stop_chars:
            raise APIError(
                400,
                f"the stop strings have {chars} characters, more than the limit of {settings.max_stop_chars}",
                "stop",
            )

    async def tokenized(fn, items: list, sizes: list[int]) -> list:
        try:
            return await tokenizing.map(fn, items, sizes)
        except ValueError as e:
            raise bad_request(e) from None

    @app.post("/v1/completions")
    async def completions(raw: Request):
        req = await bodies.read(raw, CompletionRequest)
        prompts = req.prompts()
        check(req, len(prompts))
        if not prompts:
            raise APIError(400, "the prompt list is empty", "prompt")
        if len(prompts) > settings.max_prompts:
            raise APIError(400, f"at most {settings.max_prompts} prompts per request, got {len(prompts)}", "prompt")
        for i, p in enumerate(prompts):
            if isinstance(p, str) and len(p) > settings.max_prompt_chars:
                raise APIError(
                    400,
                    f"prompt {i} has {len(p)} characters, more than the limit of {settings.max_prompt_chars}",
                    "prompt",
                )
            if not isinstance(p, str) and len(p) >= engine.max_model_len:  # before the engine reads each id
                raise APIError(
                    400,
                    f"prompt {i} of {len(p)} tokens is too long: max_model_len="
                    f"{engine.max_model_len} leaves no room to generate",
                    "prompt",
                )
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(await tokenized(engine.encode, texts, [len(p) for p in texts]))
        token_ids = [next(encoded) if isinstance(p, str) else list(p) for p in prompts]
        run = RequestRun(engine, model_name, "cmpl", token_ids, req, req.logprobs, settings.max_stream_buffer)
        return await run.respond(raw, "text_completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request):
        req = await bodies.read(raw, ChatCompletionRequest)
        check(req, 1)
        if req.max_completion_tokens is not None:
            req.max_tokens = req.max_completion_tokens
        messages = [m.as_template_input() for m in req.messages]
        if (chars := sum(len(m["content"]) for m in messages)) > settings.max_prompt_chars:
            raise APIError(
                400,
                f"the messages have {chars} characters, more than the limit of {settings.max_prompt_chars}",
                "messages",
            )
        try:
            tools = req.tools if req.resolved_tool_choice != "none" else None
        except ValueError as e:
            raise bad_request(e) from None
        [prompt] = await tokenized(
            lambda m: chat_prompt(engine.tokenizer, m, settings.chat_template, tools), [messages], [chars]
        )
        run = RequestRun(engine, model_name, "chatcmpl", [prompt], req, req.chat_logprobs, settings.max_stream_buffer)
        return await run.respond(raw, "chat.completion")

    return app


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


def serve(
    engine: AsyncLLM,
    settings: ServerSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Run the server until SIGTERM or SIGINT (shutting down within the grace period) or the engine process's
    death (its requests failed, ``/health`` 503 meanwhile), then close the engine."""
    settings = settings or ServerSettings()
    raise_descriptor_limit(settings.max_connections)
    config = server_config(build_app(engine, settings), settings, host, port, log_level)
    # Once shut down, uvicorn raises the signal that stopped it again. SIGTERM's default action would end
    # the process there and then, the engine unclosed (tensor-parallel workers left running): make it an
    # interrupt, as SIGINT's is, and end normally.
    on_main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    server = _Server(config, engine)
    engine.on_engine_dead = lambda: setattr(server, "should_exit", True)  # every request has failed already
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        engine.close()


def server_config(app: FastAPI, settings: ServerSettings, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for ``app``: the connection cap and idle timeout, the shutdown's grace period."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_protocol(settings.max_connections, settings.idle_timeout),
        timeout_graceful_shutdown=settings.shutdown_grace_period,
    )


def _interrupt(signum, frame):
    raise KeyboardInterrupt
