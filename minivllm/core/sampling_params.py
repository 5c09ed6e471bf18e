"""Per-request sampling settings (names and defaults as vLLM's)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_LOGPROBS = 20  # as vLLM's default max_logprobs (and OpenAI's top_logprobs limit)
# a temperature below this is greedy decoding (vLLM's _SAMPLING_EPS): dividing logits by 1e-38 overflows them to
# inf, and the softmax of those is NaN, which would sample token 0 forever
GREEDY_BELOW = 1e-5


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
    repetition_penalty: float = Field(1.0, ge=0.01, description="> 1 discourages prompt and output tokens, < 1 "
                                      "favours them; at least 0.01: a seen token's logit divided by 1e-40 overflows")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted once per output token seen")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted per occurrence in the output")
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: list[str] = Field(default_factory=list, description="strings that end the output")
    stop_token_ids: list[int] = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="top log-probabilities per generated token (0: the sampled one only)")

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
