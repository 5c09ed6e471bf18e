"""GPU tests: run where CUDA is present (scripts/gpu_check.sh on the device machine), skipped elsewhere.

With ``TRITON_INTERPRET=1`` and triton installed, the kernel tests (marked ``kernels``) also run on the
CPU through Triton's interpreter, at small sizes: a way to check kernel logic without a GPU.
"""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()


def _patch_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a loaded scalar (a 1-element array) into a loop bound with
    ``int(array)``, which NumPy >= 2.4 refuses; use ``.item()`` instead."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patched


if INTERPRET:
    _patch_interpreter_index()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu" not in str(item.fspath).replace(os.sep, "/"):
            continue
        if torch.cuda.is_available():
            continue
        if INTERPRET and item.get_closest_marker("kernels"):
            continue
        item.add_marker(pytest.mark.skip(reason="needs CUDA (or TRITON_INTERPRET=1 for the kernel tests)"))


def pytest_configure(config):
    config.addinivalue_line("markers", "kernels: Triton kernel tests that can also run in the interpreter")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
