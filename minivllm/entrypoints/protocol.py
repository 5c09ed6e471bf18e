"""OpenAI request bodies (with vLLM's extra sampling fields) and the fields refused; error bodies are
:mod:`minivllm.entrypoints.errors`'."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from minivllm.core.sampling_params import MAX_LOGPROBS, SamplingParams, StructuredOutputsParams
from minivllm.entrypoints.errors import describe_errors
from minivllm.entrypoints.tools import (
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCallParser,
    response_format_constraint,
    tool_calls_text,
    tool_constraint,
)

# OpenAI and vLLM fields that change what is generated and that minivllm does not implement. A request
# that uses one gets a 400 naming it: ignoring it would answer a different question than the one asked.
# Each maps to the values that ask for nothing, which clients may send. Other unknown fields are ignored
# (``metadata``, ``store``, ``service_tier``, ... change nothing here).
UNSUPPORTED_FIELDS: dict[str, tuple] = {
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "use_beam_search": (None, False),
    "prompt_logprobs": (None,),
    "allowed_token_ids": (None, []),
    "bad_words": (None, []),
    "logits_processors": (None, []),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "truncate_prompt_tokens": (None,),
    "skip_special_tokens": (None, True),
}
UNSUPPORTED_COMPLETION_FIELDS = {**UNSUPPORTED_FIELDS, "echo": (None, False), "suffix": (None, "")}
UNSUPPORTED_CHAT_FIELDS = {
    **UNSUPPORTED_FIELDS,
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "echo": (None, False),
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "documents": (None, []),
}


class FieldError(ValueError):
    """A bad value of one request field, named in the error body's ``param``."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields both endpoints share. Unknown fields are kept aside (``model_extra``) to be checked against
    the unsupported ones; floats must be finite (JSON's ``Infinity`` and ``NaN`` parse to floats)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    unsupported_fields: ClassVar[dict[str, tuple]] = UNSUPPORTED_FIELDS

    model: str | None = None
    max_tokens: int | None = None  # None: what is left of max_model_len
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    # vLLM's extras
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    structured_outputs: dict[str, Any] | None = None  # a StructuredOutputsParams (strict parsing takes no dataclass)
    response_format: ResponseFormat | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):  # one clear message rather than one per member of the union
        if v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            return v
        raise ValueError("must be a string or a list of strings")

    def unsupported_field(self) -> str | None:
        """The first field given that asks for something minivllm does not do, if any."""
        extra = self.model_extra or {}
        return next(
            (
                name
                for name, harmless in self.unsupported_fields.items()
                if name in extra and extra[name] not in harmless
            ),
            None,
        )

    def constraints(self) -> dict[str, StructuredOutputsParams]:
        """The structured-output constraints the request asks for, by the field that asks."""
        found = {}
        if self.structured_outputs is not None:
            try:
                found["structured_outputs"] = StructuredOutputsParams(**self.structured_outputs)
            except ValidationError as e:
                message, _ = describe_errors(e.errors())
                raise FieldError("structured_outputs", f"structured_outputs: {message}") from None
        if self.response_format is not None:
            try:
                found["response_format"] = response_format_constraint(self.response_format)
            except ValueError as e:
                raise FieldError("response_format", str(e)) from None
        return {k: v for k, v in found.items() if v is not None}

    def constraint(self) -> tuple[str, StructuredOutputsParams] | tuple[None, None]:
        """(the field, its constraint): at most one field may constrain the output."""
        found = self.constraints()
        if len(found) > 1:
            raise FieldError(list(found)[1], f"only one of {' and '.join(found)} may constrain the output")
        return next(iter(found.items()), (None, None))

    def sampling_params(self, num_prompt_tokens: int, max_model_len: int, logprobs: int | None) -> SamplingParams:
        """Raises ValueError (pydantic's ValidationError is one) for out-of-range values, and, as vLLM,
        for a ``max_tokens`` that does not fit the context after the prompt (a prompt too long by itself
        is left to the engine, whose message says so)."""
        if self.max_tokens is None:
            max_tokens = max(1, max_model_len - num_prompt_tokens)
        else:
            max_tokens = self.max_tokens
            if num_prompt_tokens < max_model_len < num_prompt_tokens + max_tokens:
                raise FieldError(
                    "max_tokens",
                    (
                        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                        f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, {max_tokens} in "
                        "the completion). Please reduce the length of the prompt or max_tokens."
                    ),
                )
        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logprobs=logprobs,
            structured_outputs=self.constraint()[1],
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    unsupported_fields: ClassVar[dict[str, tuple]] = UNSUPPORTED_COMPLETION_FIELDS

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_tokens: int | None = 16  # OpenAI's default for completions

    @field_validator("prompt", mode="plain")  # the whole check: pydantic's union of lists is 10x slower
    @classmethod
    def _prompt(cls, v):
        def token_ids(p) -> bool:
            return isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)

        if (
            isinstance(v, str)
            or token_ids(v)
            or (isinstance(v, list) and (all(isinstance(p, str) for p in v) or all(token_ids(p) for p in v)))
        ):
            return v
        raise ValueError("must be a string, a list of token ids, or a list of strings or of token-id lists")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):  # validated: all ids, or all prompts
            return [p]
        return list(p)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str  # text parts are joined: the template sees plain strings
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's calls, written back as the model wrote them

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v, info):
        if v is None and info.data.get("role") == "assistant":  # a turn that only called tools
            return ""
        if isinstance(v, str):
            return v
        if isinstance(v, list) and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in v
        ):
            return "".join(part["text"] for part in v)
        raise ValueError("must be a string or a list of {'type': 'text', 'text': ...} parts")

    def as_template_input(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content + tool_calls_text(self.tool_calls or [])}


class ChatCompletionRequest(_SamplingRequest):
    unsupported_fields: ClassVar[dict[str, tuple]] = UNSUPPORTED_CHAT_FIELDS

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None

    @property
    def resolved_tool_choice(self):
        """OpenAI's default: "auto" with tools, "none" without."""
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise FieldError("tool_choice", "tool_choice needs tools")
        return self.tool_choice or ("auto" if self.tools else "none")

    def constraints(self) -> dict[str, StructuredOutputsParams]:
        found = super().constraints()
        try:
            if (tools := tool_constraint(self.tools or [], self.resolved_tool_choice)) is not None:
                found["tool_choice"] = tools
        except ValueError as e:
            raise FieldError("tool_choice", str(e)) from None
        return found

    def tool_parser(self) -> ToolCallParser | None:
        """What turns the output into ``tool_calls``; None when the request offers no tools."""
        choice = self.resolved_tool_choice
        return None if choice == "none" else ToolCallParser(self.tools, choice)

    @property
    def chat_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
