"""minivllm's conformance kit on this plugin: the model contracts, greedy tokens equal to transformers'
Gemma on a tiny random checkpoint (prefix-cache hits, chunked prefill, preemption), on one rank and on two.

Run with the plugin installed (``pip install -e .``, then ``pytest``), or for any other installed
plugin as ``minivllm check-plugin model GemmaForCausalLM``."""

import pytest

from minivllm.testing import contracts


@pytest.mark.parametrize("contract", contracts("model"), ids=str)
def test_gemma_keeps_the_model_contract(contract):
    contract.check("GemmaForCausalLM")
