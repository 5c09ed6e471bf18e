"""benchmarks/kv_quality.py's perplexity against transformers' log-probabilities on a tiny random checkpoint:
the chunked run through the paged cache scores exactly the tokens it says, including the windows of
llama-perplexity (benchmarks/llama_cpp_peer.py) that the llama.cpp comparison counts."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from minivllm import LLM
from tests.checkpoints import random_prompts

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import kv_quality  # noqa: E402
import llama_cpp_peer  # noqa: E402


def hf_nll(path: str, tokens: list[int]) -> list[float]:
    """transformers' negative log-likelihood of each of ``tokens[1:]`` given the tokens before it."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([tokens])).logits[0, :-1].float()  # [len - 1, V]
    return (-logits.log_softmax(-1).gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]).tolist()


@pytest.fixture(scope="module")
def llm(llama_path):
    return LLM(
        llama_path, kvcache_block_size=16, max_model_len=256, num_kvcache_blocks=32, dtype="float32", enforce_eager=True
    )


@pytest.mark.parametrize("chunk, first", [(100, 0), (16, 0), (16, 20), (7, 16), (16, 70)])
def test_log_likelihood_scores_the_tokens_after_first(llm, llama_path, chunk, first):
    tokens = random_prompts(1, 80, 80, seed=5)[0]
    nll, count = kv_quality.log_likelihood(llm, tokens, chunk, first)
    want = hf_nll(llama_path, tokens)[first:]
    assert count == len(want) == len(tokens) - 1 - first
    assert nll == pytest.approx(sum(want), rel=1e-4)


def test_window_perplexity_is_llama_perplexitys(llm, llama_path):
    """Windows of n_ctx tokens from an empty cache (the last partial one dropped), the second half scored."""
    tokens = random_prompts(1, 150, 150, seed=6)[0]
    n_ctx = 32
    scored = []
    for start, first in llama_cpp_peer.window_targets(len(tokens), n_ctx):
        scored += hf_nll(llama_path, tokens[start : start + n_ctx])[first:]
    assert len(scored) == (150 // n_ctx) * (n_ctx - n_ctx // 2 - 1)
    assert kv_quality.window_perplexity(llm, tokens, n_ctx) == pytest.approx(
        math.exp(sum(scored) / len(scored)), rel=1e-4
    )
