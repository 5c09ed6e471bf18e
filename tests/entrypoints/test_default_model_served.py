"""An engine on the embedded model, served without a name, calls it SmolLM2-135M-Instruct, not a path."""

import openai

from minivllm.entrypoints.async_llm import AsyncLLM
from tests.entrypoints import serving


def test_the_embedded_model_is_served_under_its_short_id():
    engine = AsyncLLM(max_model_len=256, kvcache_block_size=16, max_num_seqs=2, engine_process=True)  # embedded
    try:
        assert engine.served_model_name == "SmolLM2-135M-Instruct"
        with serving(engine) as base_url:
            client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
            out = client.completions.create(model="SmolLM2-135M-Instruct", prompt="Hi", max_tokens=2)
            assert out.model == "SmolLM2-135M-Instruct"
    finally:
        engine.close()
