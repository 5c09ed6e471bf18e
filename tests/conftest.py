import os

# keep third-party plugins installed on this machine out of the tests; tests that need one set it
os.environ.setdefault("MINIVLLM_PLUGINS", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.checkpoints import make_checkpoint  # noqa: E402

ARCHS = ["llama", "qwen2", "qwen3"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """arch -> path of a tiny random float32 checkpoint with a tokenizer."""
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: make_checkpoint(str(root / arch), arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def llama_path(checkpoints) -> str:
    return checkpoints["llama"]
