"""The embedded model is the default of LLM(), of EngineConfig and of the commands, and has a short id."""

import os

import minivllm
from minivllm import EngineConfig
from minivllm.core.loading.default_model import DEFAULT_MODEL_ID, default_model, model_id


def test_default_model_is_exported_and_is_the_config_default():
    path = minivllm.default_model()
    assert path == default_model() and path.endswith(".gguf") and os.path.isfile(path)
    assert EngineConfig().model == path
    assert "default_model" in minivllm.__all__


def test_the_embedded_model_has_a_short_id(llama_path):
    assert model_id(default_model()) == DEFAULT_MODEL_ID == "SmolLM2-135M-Instruct"
    assert model_id(llama_path) == llama_path  # any other model keeps its name
