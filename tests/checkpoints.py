"""Tiny random Hugging Face checkpoints (float32 safetensors plus a real BPE tokenizer) and a
transformers greedy reference, shared by the CPU and GPU test suites."""

from __future__ import annotations

import os

import torch

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "A paged KV cache stores keys and values in fixed-size blocks.",
    "Greedy decoding picks the most likely token at every step.",
    "Once upon a time there was a small inference engine that wanted to be fast.",
] * 4

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6)


def tiny_config(arch: str):
    import transformers

    if arch == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 256}
        return transformers.LlamaConfig(**TINY, rope_parameters=rope, tie_word_embeddings=False)
    if arch == "qwen2":
        return transformers.Qwen2Config(**TINY, tie_word_embeddings=True)
    if arch == "qwen3":
        return transformers.Qwen3Config(**TINY, head_dim=32, tie_word_embeddings=False)
    raise ValueError(arch)


def save_tokenizer(path: str, vocab_size: int = 300) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(path)


def make_checkpoint(path: str, arch: str, seed: int = 0, std: float = 0.3) -> str:
    """Write a tiny random checkpoint of ``arch`` ("llama", "qwen2", "qwen3") to ``path``. Weights are
    drawn wider than the usual init so that greedy choices are not near-ties."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, std)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


def hf_greedy(path: str, prompts: list[list[int]], max_new_tokens: int, device: str = "cpu") -> list[list[int]]:
    """Greedy continuation of each prompt by transformers itself, from a checkpoint directory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return greedy_reference(model, prompts, max_new_tokens)


def greedy_reference(model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation by a transformers model: full forward per step, no cache, EOS not special."""
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            new = []
            for _ in range(max_new_tokens):
                token = int(model(ids).logits[0, -1].argmax())
                new.append(token)
                ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
            outputs.append(new)
    return outputs


def random_prompts(n: int, low: int, high: int, vocab: int = 512, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (length,), generator=g).tolist() for length in lengths]
