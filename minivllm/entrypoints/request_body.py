"""A request body read, parsed and validated off the event loop. A body of up to ``max_body_bytes``
takes time in proportion to its size (16 MB of token ids: about 0.4 s here), so it runs on a thread of
its own, one body at a time, and is parsed by pydantic's ``from_json``, which lets go of the interpreter
meanwhile (``json.loads`` holds it throughout: 0.15 s of a stalled event loop per 16 MB). The event loop
only waits for the result. Types are strict, as OpenAI's and
vLLM's (``"stream": "yes"`` or ``"max_tokens": true`` are refused, not coerced); an integer is still a
valid float."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from minivllm.entrypoints.errors import APIError, describe_errors

Body = TypeVar("Body", bound=BaseModel)

# an escaped UTF-16 surrogate: only these can make a string that is no Unicode (raw bytes must be UTF-8)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BodyReader:
    """Parses each request's body on its one thread; shared by the app's routes."""

    def __init__(self):
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minivllm-body")

    async def read(self, request: Request, model: type[Body]) -> Body:
        """The body as ``model``; an APIError (400) for one that is not UTF-8, not JSON, or not valid."""
        raw = await request.body()  # the body-size middleware refuses an oversized one while it arrives
        return await asyncio.get_running_loop().run_in_executor(self._thread, parse, raw, model)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def parse(raw: bytes, model: type[Body]) -> Body:
    try:
        value = pydantic_core.from_json(raw)  # lets go of the interpreter while it parses, unlike json.loads
    except ValueError:
        value = _parse_for_the_error(raw)
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as e:
        raise APIError(400, *describe_errors(e.errors())) from None


def _parse_for_the_error(raw: bytes):
    """A body that ``from_json`` refused, parsed again by ``json`` for a clearer message (or the value, if
    ``json`` reads it)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "the body could not be parsed: it must be JSON in UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the body is not valid JSON: {e.msg} (character {e.pos})") from None
    if _SURROGATE_ESCAPE.search(text) and (path := _lone_surrogate(value)) is not None:
        raise APIError(
            400,
            f"{path or 'the body'}: a lone UTF-16 surrogate (such as \\ud800) is no character",
            path.split(".")[0].split("[")[0] or None,
        )
    return value


def _lone_surrogate(value, path: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string in ``value`` that is no valid Unicode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        for key, item in value.items():
            if (found := _lone_surrogate(key, path) if isinstance(key, str) else None) is not None:
                return found
            if (found := _lone_surrogate(item, f"{path}.{key}".lstrip("."))) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _lone_surrogate(item, f"{path}[{i}]")) is not None:
                return found
    return None
