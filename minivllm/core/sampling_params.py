"""Per-request sampling settings (names and defaults as vLLM's)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(1.0, ge=0.0, description="0 means greedy decoding")
    max_tokens: int = Field(64, ge=1)
    ignore_eos: bool = False
    top_k: int = Field(-1, description="-1 or 0 keeps the whole vocabulary")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = None
    stop_token_ids: list[int] = Field(default_factory=list)

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v < -1:
            raise ValueError("top_k must be -1 (disabled), 0 (disabled) or a positive number")
        return v

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
