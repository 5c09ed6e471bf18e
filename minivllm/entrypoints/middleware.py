"""The server's ASGI middleware: the API key and the body-size limit, checked around every route (an
unknown path included) before the request reaches FastAPI. Plain ASGI rather than Starlette's
``BaseHTTPMiddleware``, which would sit between a streaming response and its client."""

from __future__ import annotations

import hmac

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from minivllm.entrypoints.errors import error_body


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


class APIKeyMiddleware:
    """Every HTTP request but those to ``open_paths`` needs ``Authorization: Bearer KEY``, the scheme in
    any case (RFC 9110). The key is compared in constant time, so response times do not reveal it."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str]):
        self.app, self.key, self.open_paths = app, api_key.encode(), open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            error_body("invalid or missing API key", 401), status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, token = (_header(scope, b"authorization") or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


class BodyLimitMiddleware:
    """Refuse a request body over ``max_bytes`` with a 413: at once when ``Content-Length`` says so, else
    as soon as the bytes received pass the limit (a chunked body has no length), before it is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = HTTPException(413, f"the request body is larger than the limit of {self.max_bytes} bytes")
        length = _header(scope, b"content-length")
        if length is not None and int(length) > self.max_bytes:  # uvicorn refuses a length that is no number
            response = JSONResponse(error_body(too_large.detail, 413), status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large  # FastAPI passes an HTTPException raised while reading on to its handler
            return message

        await self.app(scope, limited, send)
