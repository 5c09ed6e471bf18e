"""Gemma 1 (gemma-2b, gemma-7b, CodeGemma) on minivllm's Llama-shaped decoder, public layers only.

Gemma is a Llama relative; :class:`minivllm.layers.DecoderForCausalLM` builds the rest (packed q/k/v and
gate/up, rotary attention over the paged cache, tensor-parallel sharding, weight loading), and this class
sets what differs:
- RMSNorm scales by ``(1 + weight)`` (checkpoints store the weight centred on 0), in float32 before
  rounding: the layers' ``RMSNorm(unit_offset=True)``, through ``norm_unit_offset``;
- the gated MLP uses the tanh-approximated GELU (``GeluAndMul``);
- the embeddings are multiplied by sqrt(hidden_size), a constant rounded to the model dtype first (as
  transformers does: 55.4256 becomes 55.5 in bfloat16).
``head_dim`` comes from the config (256 in the released checkpoints, not hidden_size // heads) and the LM
head is tied to the embeddings (the checkpoint has no ``lm_head.weight``); the decoder reads both.
"""

from __future__ import annotations

import torch
from torch import nn

from minivllm.layers import DecoderForCausalLM, GeluAndMul

# transformers' names for Gemma's activation; "gelu" is the legacy name of the released configs, which
# transformers (and the reference implementation) run as the tanh approximation
TANH_GELU_NAMES = ("gelu", "gelu_pytorch_tanh")


class GemmaForCausalLM(DecoderForCausalLM):
    norm_unit_offset = True

    def __init__(self, config, ctx):
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("Gemma: use_bidirectional_attention=True is not supported (minivllm attends causally)")
        super().__init__(config, ctx)
        # the runner builds the model in its dtype, so the embedding weight's dtype is the model's
        scale = torch.tensor(config.hidden_size**0.5, dtype=self.embed_tokens.weight.dtype)
        self.register_buffer("embed_scale", scale, persistent=False)

    def activation(self) -> nn.Module:
        if self.config.hidden_act not in TANH_GELU_NAMES:
            raise ValueError(
                f"Gemma: unsupported hidden_act {self.config.hidden_act!r} (expected one of {TANH_GELU_NAMES})"
            )
        return GeluAndMul(approximate="tanh")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids) * self.embed_scale  # [T, hidden_size]
