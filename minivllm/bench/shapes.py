"""Model shapes for benchmarks with random weights: the configurations of real models, no weights needed
(``load_format="dummy"``). The offline and serving benchmarks (``benchmarks/``) and the GPU tests build them."""

from __future__ import annotations

SHAPES = {
    "qwen3-0.6b": (
        "Qwen3Config",
        dict(
            hidden_size=1024,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=3072,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1_000_000.0,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
        ),
    ),
    "qwen3-8b": (
        "Qwen3Config",
        dict(
            hidden_size=4096,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=12288,
            vocab_size=151936,
            tie_word_embeddings=False,
            rope_theta=1_000_000.0,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
        ),
    ),
    "llama3-8b": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            tie_word_embeddings=False,
            rope_theta=500_000.0,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
        ),
    ),
}


def write_config(shape: str, path: str, **overrides):
    """Write the Hugging Face config of ``shape`` (bf16), with ``overrides`` of its fields (a tokenizer's
    ``vocab_size``, say), to the directory ``path``; returns it."""
    import transformers

    cls_name, kwargs = SHAPES[shape]
    config = getattr(transformers, cls_name)(**{**kwargs, **overrides}, dtype="bfloat16")
    config.architectures = [cls_name.replace("Config", "ForCausalLM")]
    config.save_pretrained(path)
    return config
