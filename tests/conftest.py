import os
import sys

# keep third-party plugins installed on this machine out of the tests; tests that need one set it
os.environ.setdefault("MINIVLLM_PLUGINS", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from minivllm.core import plugins  # noqa: E402
from tests.checkpoints import make_checkpoint  # noqa: E402
from tests.packages import pip_install_copy  # noqa: E402

ARCHS = ["llama", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def async_scheduling(request) -> bool:
    """Both step pipelines (see minivllm/core/engine.py): a test that takes this runs with and without
    overlapped scheduling, and must see the same behaviour."""
    return request.param


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
    """The throwaway plugin package of tests/fixtures, installed with its real entry point."""
    site = pip_install_copy(
        os.path.join(os.path.dirname(__file__), "fixtures", "minivllm-test-plugin"),
        tmp_path_factory.mktemp("plugin_site"),
    )
    sys.path.insert(0, site)
    yield site
    sys.path.remove(site)


@pytest.fixture
def allow(monkeypatch):
    """Set MINIVLLM_PLUGINS and reload; afterwards restore the default plugin state for other tests."""

    def set_allowed(value):
        monkeypatch.setenv("MINIVLLM_PLUGINS", value)
        plugins.load_plugins(reload=True)

    yield set_allowed
    monkeypatch.undo()
    plugins.load_plugins(reload=True)
