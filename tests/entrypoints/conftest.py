import pytest

from tests.entrypoints import tiny_async_llm


@pytest.fixture(scope="module")
def tiny_engine(llama_path):
    """:func:`tiny_async_llm`, one per test module."""
    engine = tiny_async_llm(llama_path)
    yield engine
    engine.close()
