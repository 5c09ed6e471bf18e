import pytest

from tests.entrypoints import MODEL


@pytest.fixture(scope="module")
def tiny_engine(llama_path):
    """An AsyncLLM of the tiny Llama, served as "tiny" (blocks of 16 tokens, 160 of them, max_model_len
    128); one per test module."""
    from minivllm.entrypoints import AsyncLLM

    engine = AsyncLLM(llama_path, served_model_name=MODEL, kvcache_block_size=16, max_model_len=128,
                      num_kvcache_blocks=160)
    yield engine
    engine.close()
