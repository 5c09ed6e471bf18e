"""The HTTP server's settings, apart from the server so that ``minivllm --help`` needs no FastAPI."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class ServerSettings(BaseModel):
    """The server's settings (``minivllm serve``'s flags of the same names): limits that bound the work
    one request can ask for (and so how long it can delay the others), the connections one client can
    hold, the API key, and how long a shutdown may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr | None = Field(None, description="every route but /health needs 'Authorization: Bearer KEY'")
    public_metrics: bool = Field(False, description="serve /metrics without the API key (for a scraper)")
    chat_template: str | None = Field(None, description="a Jinja chat template (default: the tokenizer's)")
    max_n: int = Field(128, ge=1, description="most completions per prompt (n), as vLLM")
    max_prompts: int = Field(128, ge=1, description="most prompts in one completions request")
    max_request_sequences: int = Field(
        256, ge=1, description="most sequences one request may start: its prompts times n"
    )
    max_prompt_chars: int = Field(
        1_000_000,
        ge=1,
        description=(
            "longest prompt in characters (a chat: its messages' contents together), checked before tokenizing"
        ),
    )
    max_stop: int = Field(64, ge=0, description="most stop strings, and most stop token ids, in one request")
    max_stop_chars: int = Field(4096, ge=0, description="most characters of all stop strings of one request")
    max_tokenizing_chars: int = Field(
        4_000_000,
        ge=1,
        description="most characters waiting to be tokenized, all requests together; past it a request gets a 503",
    )
    max_body_bytes: int = Field(16 * 2**20, ge=1, description="largest request body in bytes; a larger one gets a 413")
    max_stream_buffer: int = Field(
        65536,
        ge=1,
        description=(
            "most output tokens (each counting 1 + its top logprobs) a stream may hold unread by its client, per "
            "prompt; past it the request is aborted with an error"
        ),
    )
    max_connections: int = Field(
        512, ge=1, description="most open connections; more are answered 503 and closed at once"
    )
    idle_timeout: float = Field(
        10.0,
        gt=0,
        description=(
            "seconds a connection may go without sending a request's headers (since it opened, or since its "
            "last response) before it is closed"
        ),
    )
    shutdown_grace_period: float = Field(
        5.0,
        ge=0,
        description=(
            "seconds a shutdown waits for aborted requests to send their last chunk before closing connections"
        ),
    )

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:  # an empty key would open every route unnoticed
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("the API key is empty: give a key, or none to serve without auth")
        return v
