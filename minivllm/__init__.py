"""minivllm: a small, plugin-based LLM inference engine."""

from minivllm.core.config import EngineConfig
from minivllm.core.hookspecs import hookimpl
from minivllm.core.loading.default_model import default_model
from minivllm.core.sampling_params import SamplingParams, StructuredOutputsParams
from minivllm.entrypoints.async_llm import AsyncLLM
from minivllm.entrypoints.llm import LLM

__all__ = ["LLM", "AsyncLLM", "EngineConfig", "SamplingParams", "StructuredOutputsParams", "default_model", "hookimpl"]
