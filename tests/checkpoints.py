"""Tiny random checkpoints of the built-in architectures (Llama with llama3 RoPE scaling, Qwen2 with tied
embeddings, Qwen3 with its own head_dim) and a transformers greedy reference, shared by the CPU and GPU
test suites. The tokenizer, the draw of the weights and the reference loop are the conformance kit's."""

from __future__ import annotations

import os

import torch

from minivllm.testing.checkpoints import (
    CORPUS,
    TINY,
    greedy_reference,
    random_prompts,
    randomize_weights,
    save_tokenizer,
)

__all__ = [
    "CORPUS",
    "greedy_reference",
    "hf_greedy",
    "make_checkpoint",
    "random_prompts",
    "save_tokenizer",
    "tiny_config",
]


def tiny_config(arch: str):
    import transformers

    shape = {k: v for k, v in TINY.items() if k != "head_dim"}  # Llama and Qwen2: hidden_size // heads
    if arch == "llama":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        }
        return transformers.LlamaConfig(**shape, rope_parameters=rope, tie_word_embeddings=False)
    if arch == "qwen2":
        return transformers.Qwen2Config(**shape, tie_word_embeddings=True)
    if arch == "qwen3":
        return transformers.Qwen3Config(**shape, head_dim=32, tie_word_embeddings=False)
    raise ValueError(arch)


def make_checkpoint(path: str, arch: str, seed: int = 0, std: float = 0.3) -> str:
    """Write a tiny random checkpoint of ``arch`` ("llama", "qwen2", "qwen3") to ``path``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    randomize_weights(model, std)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


def hf_greedy(path: str, prompts: list[list[int]], max_new_tokens: int, device: str = "cpu") -> list[list[int]]:
    """Greedy continuation of each prompt by transformers itself, from a checkpoint directory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return greedy_reference(model, prompts, max_new_tokens)
