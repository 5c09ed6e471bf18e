"""Qwen2 (bias on q/k/v) and Qwen3 (RMSNorm on each head of q and k): the Llama-shaped decoder, switched."""

from __future__ import annotations

from minivllm.plugins.models.llama import DecoderForCausalLM


class Qwen2ForCausalLM(DecoderForCausalLM):
    qkv_bias = True


class Qwen3ForCausalLM(DecoderForCausalLM):
    qk_norm = True
