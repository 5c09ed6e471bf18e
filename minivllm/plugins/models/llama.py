"""Llama-family decoder (Llama 2/3, SmolLM2): the layers' Llama-shaped causal LM, with no switch set."""

from __future__ import annotations

from minivllm.layers import DecoderForCausalLM


class LlamaForCausalLM(DecoderForCausalLM):
    pass
