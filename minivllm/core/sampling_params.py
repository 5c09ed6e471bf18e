"""Per-request sampling settings (names and defaults as vLLM's)."""

from __future__ import annotations

import json as _json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

MAX_LOGPROBS = 20  # as vLLM's default max_logprobs (and OpenAI's top_logprobs limit)
# a temperature below this is greedy decoding (vLLM's _SAMPLING_EPS): dividing logits by 1e-38 overflows them to
# inf, and the softmax of those is NaN, which would sample token 0 forever
GREEDY_BELOW = 1e-5


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))  # a dataclass: a model's ``json`` method is in the way
class StructuredOutputsParams:
    """What the output must match (vLLM's ``StructuredOutputsParams``): exactly one of a JSON schema, any
    JSON object, a regular expression, a choice of strings, or a grammar (Lark, or GBNF/EBNF with ``::=``).
    Plain data: the core compiles it (minivllm/core/structured_output.py)."""

    json: dict[str, Any] | None = Field(None, description="a JSON schema (a dict or its JSON text)")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = Field(None, description="any JSON object")

    @field_validator("json", mode="before")
    @classmethod
    def _json(cls, v):
        if isinstance(v, str):
            try:
                v = _json.loads(v)
            except ValueError as e:
                raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        if v is not None and not isinstance(v, dict):
            raise ValueError("a JSON schema must be an object")
        return v

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputsParams:
        given = [k for k in ("json", "regex", "choice", "grammar") if getattr(self, k) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError(
                f"structured_outputs takes exactly one of json, regex, choice, grammar, json_object; "
                f"got {', '.join(given) or 'none'}"
            )
        if self.choice is not None and (not self.choice or not all(self.choice)):
            raise ValueError("choice must list at least one non-empty string")
        return self

    @property
    def kind(self) -> str:
        """Which constraint: "json", "regex", "choice", "grammar" or "json_object"."""
        return (
            next(k for k in ("json", "regex", "choice", "grammar") if getattr(self, k) is not None)
            if not self.json_object
            else "json_object"
        )


class SamplingParams(BaseModel):
    # every float must be finite: an infinite temperature or penalty would poison a whole batch's step
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    n: int = Field(1, ge=1, description="completions per prompt; they share the prompt's KV blocks")
    temperature: float = Field(1.0, ge=0.0, description=f"0 (or below {GREEDY_BELOW}) means greedy decoding")
    max_tokens: int = Field(64, ge=1)
    min_tokens: int = Field(0, ge=0, description="EOS, stop tokens and stop strings cannot end the output sooner")
    ignore_eos: bool = False
    top_k: int = Field(-1, description="-1 or 0 keeps the whole vocabulary (so does any k >= its size)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(
        1.0,
        ge=0.01,
        description="> 1 discourages prompt and output tokens, < 1 "
        "favours them; at least 0.01: a seen token's logit divided by 1e-40 overflows",
    )
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted once per output token seen")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted per occurrence in the output")
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: list[str] = Field(default_factory=list, description="strings that end the output")
    stop_token_ids: list[int] = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="top log-probabilities per generated token (0: the sampled one only)"
    )
    structured_outputs: StructuredOutputsParams | None = Field(
        None, description="constrain the output to a JSON schema, a regex, a choice or a grammar"
    )

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v < -1:
            raise ValueError("top_k must be -1 (disabled), 0 (disabled) or a positive number")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("stop_token_ids", mode="before")
    @classmethod
    def _stop_token_ids(cls, v):
        return [] if v is None else v

    @model_validator(mode="after")
    def _check(self) -> SamplingParams:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> SamplingParams:
        """A copy with ``update`` applied and validated (pydantic's own copies ``update`` in unchecked, so
        ``update={"temperature": -1}`` would sample)."""
        copy = super().model_copy(deep=deep)
        return type(self).model_validate({**copy.model_dump(), **update}) if update else copy

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
