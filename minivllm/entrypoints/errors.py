"""The server's refusals: :class:`APIError` (answered as an OpenAI error body by the app's handler) and
how a ValueError from a request's validation becomes one, with the field it concerns in ``param``."""

from __future__ import annotations

from pydantic import ValidationError

from minivllm.entrypoints.protocol import describe_errors

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


def bad_request(e: ValueError, where: str = "", prompt_param: str = "prompt",
                constraint_param: str = "structured_outputs") -> APIError:
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
