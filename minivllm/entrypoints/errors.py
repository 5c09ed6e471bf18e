"""The server's refusals: OpenAI's error body (:func:`error_body`), :class:`APIError` (answered with one by the
app's handler) and how a ValueError from a request's validation becomes one, with the field it concerns in
``param``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

# the error type for each status code, named as vLLM names them (after the client's exception classes)
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    499: "ClientClosedRequest",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(message: str, code: int, param: str | None = None) -> dict:
    """OpenAI's error body; its clients raise the matching exception class from the status code."""
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(code, "BadRequestError"), "param": param, "code": code}
    }


def describe_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """pydantic's errors (a request body's, or SamplingParams') as one short message that names each
    field, as ``messages[0].role: ...``, without the input values; and the first field, for ``param``."""
    parts, param = [], None
    for err in errors:
        loc = list(err["loc"])
        if loc and loc[0] == "body":  # FastAPI's locations start with where the value came from
            loc = loc[1:]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        if err["type"] in ("model_attributes_type", "dict_type", "model_type"):  # said without class names
            message = "must be a JSON object" if loc else "the body must be a JSON object"
        else:
            message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        parts.append(f"{path}: {message}" if path else message)
        if param is None and loc and isinstance(loc[0], str):
            param = loc[0]
    return "; ".join(parts), param


# The engine's checks (``LLMEngine.make_sequence``) and SamplingParams' checks across fields raise errors
# that name no field: the request field each one concerns, by the start of its message. A completions
# prompt is ``prompt``, a chat's is ``messages``.
ENGINE_ERROR_PARAMS: tuple[tuple[str, str], ...] = (
    ("the prompt is empty", "prompt"),
    ("token id ", "prompt"),
    ("prompt of ", "prompt"),
    ("the request needs up to ", "max_tokens"),
    ("stop strings need a tokenizer", "stop"),
    ("stop token id ", "stop_token_ids"),
    ("min_tokens (", "min_tokens"),
    ("stop strings must not be empty", "stop"),
    ("invalid ", "structured_outputs"),  # a grammar that does not compile (core/structured_output.py)
    ("structured output needs", "structured_outputs"),
)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def bad_request(
    e: ValueError, where: str = "", prompt_param: str = "prompt", constraint_param: str = "structured_outputs"
) -> APIError:
    """A 400 for a bad value: pydantic's errors said field by field, without the values; the engine's
    named after :data:`ENGINE_ERROR_PARAMS` (a grammar's after the field that asked for it)."""
    if isinstance(e, ValidationError):
        message, param = describe_errors(e.errors())
    else:
        message, param = str(e), getattr(e, "param", None)
    if param is None:
        param = next((p for start, p in ENGINE_ERROR_PARAMS if message.startswith(start)), None)
        param = {"prompt": prompt_param, "structured_outputs": constraint_param}.get(param, param)
    return APIError(400, where + message, param)
