"""minivllm: a small, plugin-based LLM inference engine."""

from minivllm.core.config import EngineConfig
from minivllm.core.default_model import default_model
from minivllm.core.hookspecs import hookimpl
from minivllm.core.sampling_params import SamplingParams, StructuredOutputsParams
from minivllm.llm import LLM

__all__ = ["LLM", "EngineConfig", "SamplingParams", "StructuredOutputsParams", "default_model", "hookimpl"]
