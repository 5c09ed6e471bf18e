"""Ways in: the async engine (:class:`AsyncLLM`) and the OpenAI-compatible server (``minivllm serve``)."""

from minivllm.entrypoints.async_llm import AsyncLLM, StreamOutput

__all__ = ["AsyncLLM", "StreamOutput"]
