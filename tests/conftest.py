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


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> str:
    """The throwaway plugin package of tests/fixtures, pip-installed (with its real entry point) into a
    private directory that is put on sys.path; returns that directory (for subprocesses' PYTHONPATH)."""
    import subprocess
    import sys

    site = tmp_path_factory.mktemp("plugin_site")
    source = os.path.join(os.path.dirname(__file__), "fixtures", "minivllm-test-plugin")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), source], check=True)
    sys.path.insert(0, str(site))
    yield str(site)
    sys.path.remove(str(site))
