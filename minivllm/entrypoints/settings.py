"""The HTTP server's settings, apart from the server so that ``minivllm --help`` needs no FastAPI."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ServerSettings(BaseModel):
    """The server's settings (``minivllm serve``'s flags of the same names): limits that bound the work
    one request can ask for, the API key, and how long a shutdown may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr | None = Field(None, description="every route but /health needs 'Authorization: Bearer KEY'")
    public_metrics: bool = Field(False, description="serve /metrics without the API key (for a scraper)")
    chat_template: str | None = Field(None, description="a Jinja chat template (default: the tokenizer's)")
    max_n: int = Field(128, ge=1, description="most completions per prompt (n), as vLLM")
    max_prompts: int = Field(128, ge=1, description="most prompts in one completions request")
    max_prompt_chars: int = Field(1_000_000, ge=1, description=(
        "longest prompt in characters (a chat: its messages' contents together), checked before tokenizing"))
    max_body_bytes: int = Field(16 * 2**20, ge=1, description="largest request body in bytes; a larger one gets a 413")
    shutdown_grace_period: float = Field(5.0, ge=0, description=(
        "seconds a shutdown waits for aborted requests to send their last chunk before closing connections"))
