"""Gemma 1 (gemma-2b, gemma-7b, CodeGemma) built from minivllm's public layers and interfaces only.

Where Gemma differs from Llama, and what this module does about it:
- the embeddings are multiplied by sqrt(hidden_size), a constant rounded to the model dtype first
  (as transformers does: 55.4256 becomes 55.5 in bfloat16);
- RMSNorm scales by ``(1 + weight)`` (checkpoints store the weight centred on 0), in float32 before
  rounding: :class:`GemmaRMSNorm` below, since the core ``RMSNorm`` multiplies after rounding;
- the gated MLP uses the tanh-approximated GELU (``GeluAndMul``);
- ``head_dim`` comes from the config (256 in the released checkpoints, not hidden_size // heads);
- the LM head is tied to the embeddings (the checkpoint has no ``lm_head.weight``).

Projections are the tensor-parallel layers, so the model shards over ``tensor_parallel_size`` ranks
like the built-in ones: q/k/v and gate/up are packed column-parallel, o/down row-parallel, the
vocabulary split over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from minivllm.core.interfaces import AttentionMetadata, Model, ModelContext
from minivllm.layers import (
    Attention,
    GeluAndMul,
    MergedColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RotaryEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
    load_packed_weights,
)

# transformers' names for Gemma's activation; "gelu" is the legacy name of the released configs, which
# transformers (and the reference implementation) run as the tanh approximation
TANH_GELU_NAMES = ("gelu", "gelu_pytorch_tanh")


class GemmaRMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), in float32, then rounded to x's dtype; optionally fused with the
    residual add like the core ``RMSNorm``: with ``residual``, returns (norm(x + residual), x + residual)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is not None:
            x = residual = x + residual
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight.float())
        return out.to(x.dtype) if residual is None else (out.to(x.dtype), residual)


class GemmaAttention(nn.Module):
    def __init__(self, config, ctx: ModelContext):
        super().__init__()
        self.head_dim = config.head_dim
        bias = getattr(config, "attention_bias", False)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, config.num_attention_heads,
                                          config.num_key_value_heads, bias=bias, tp=ctx.tp)
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size,
                                        bias=bias, tp=ctx.tp)
        self.rotary_emb = RotaryEmbedding(config, self.head_dim, ctx.max_model_len)
        # this rank's heads: QKVParallelLinear knows how many it holds
        self.attn = Attention(self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, self.head_dim,
                              self.head_dim**-0.5, ctx.attn_backend)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.sizes, dim=-1)
        q = q.view(-1, self.attn.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(-1, self.attn.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, meta))  # [T, hidden_size], all-reduced over ranks


class GemmaMLP(nn.Module):
    def __init__(self, config, ctx: ModelContext):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2,
                                                       tp=ctx.tp)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, tp=ctx.tp)
        self.act = GeluAndMul(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config, ctx: ModelContext):
        super().__init__()
        self.self_attn = GemmaAttention(config, ctx)
        self.mlp = GemmaMLP(config, ctx)
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual, meta):
        # the residual stream is carried un-normalised and added inside the next norm
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class GemmaForCausalLM(Model):
    # checkpoint projection -> (packed parameter, shard id) for load_packed_weights
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config, ctx: ModelContext):
        super().__init__(config, ctx)
        if config.hidden_act not in TANH_GELU_NAMES:
            raise ValueError(f"Gemma: unsupported hidden_act {config.hidden_act!r} (expected one of {TANH_GELU_NAMES})")
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("Gemma: use_bidirectional_attention=True is not supported (minivllm attends causally)")
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, ctx.tp)
        # the runner builds the model in its dtype, so the embedding weight's dtype is the model's
        scale = torch.tensor(config.hidden_size**0.5, dtype=self.embed_tokens.weight.dtype)
        self.register_buffer("embed_scale", scale, persistent=False)
        self.layers = nn.ModuleList(GemmaDecoderLayer(config, ctx) for _ in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.tie_word_embeddings = getattr(config, "tie_word_embeddings", True)
        tie = self.embed_tokens if self.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, ctx.tp, tie=tie)

    def forward(self, input_ids, positions, meta):
        hidden, residual = self.embed_tokens(input_ids) * self.embed_scale, None  # [T, hidden_size]
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden_states):
        return self.lm_head(hidden_states)  # gathered over the vocabulary shards

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        def renamed():
            for name, tensor in weights:
                if name.startswith("lm_head.") and self.tie_word_embeddings:
                    continue  # some exports store the tied head anyway
                yield name.removeprefix("model."), tensor

        load_packed_weights(self, renamed(), self.packed_modules, ignore=("rotary_emb.inv_freq",))
