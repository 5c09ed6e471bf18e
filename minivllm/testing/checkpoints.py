"""Tiny random Hugging Face checkpoints (float32 safetensors, a real BPE tokenizer) and transformers' own
greedy continuation of them: the oracle of the model contracts, and of minivllm's own tests."""

from __future__ import annotations

import os

import torch

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "A paged KV cache stores keys and values in fixed-size blocks.",
    "Greedy decoding picks the most likely token at every step.",
    "Once upon a time there was a small inference engine that wanted to be fast.",
] * 4

# a shape small enough for the CPU, with head_dim set apart from hidden_size // heads and 2 KV heads
# (so that 2 tensor-parallel ranks split every dimension)
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
)


def save_tokenizer(path: str, vocab_size: int = 300) -> None:
    """A byte-level BPE tokenizer trained on a few sentences, with ``<eos>``, saved beside a checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(path)


def randomize_weights(model: torch.nn.Module, std: float = 0.3) -> None:
    """Draw weights wider than the usual init, so that greedy choices are not near-ties, from torch's global
    generator (seed it first): a norm weight, constant at init (1 for Llama's norms, 0 for Gemma's
    ``1 + weight``), uniformly within 0.2 of that value; the rest normal with ``std``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                init = float(p.flatten()[0])
                p.uniform_(init - 0.2, init + 0.2)
            else:
                p.normal_(0.0, std)


def tiny_checkpoint(architecture: str, path: str, seed: int = 0, **overrides) -> str:
    """Write a tiny random checkpoint of a transformers architecture (``"GemmaForCausalLM"``) to ``path``.
    Raises AttributeError when transformers has no such architecture."""
    import transformers

    model_cls = getattr(transformers, architecture)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = model_cls(model_cls.config_class(**{**TINY, **overrides})).float()
        randomize_weights(model)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    save_tokenizer(path)
    return path


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
