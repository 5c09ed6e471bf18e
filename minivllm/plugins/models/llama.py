"""The Llama family (Llama 2/3, SmolLM2), read top to bottom: attention, MLP, decoder layer, causal LM.

Built from the shared blocks of :mod:`minivllm.layers` (parallel linear layers, RMSNorm, rotary, gated
activations) and the core's paged :class:`Attention`. Qwen2 and Qwen3 (``qwen.py``) are this decoder with
a switch each; a plugin for another relative (the Gemma example) sets what differs instead of copying the
rest. Parameter names follow Hugging Face checkpoints (``layers.0.self_attn.qkv_proj``,
``layers.0.mlp.gate_up_proj``, ``norm``, ...), so :meth:`DecoderForCausalLM.load_weights` loads them, q/k/v
and gate/up packed. Every projection is a tensor-parallel layer, so each piece shards over ``ctx.tp`` with
no code of its own for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from minivllm.core.interfaces import Attention, AttentionMetadata, Model, ModelContext
from minivllm.core.model_spec import head_dim, num_kv_heads
from minivllm.layers.activation import SiluAndMul
from minivllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from minivllm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from minivllm.layers.loading import load_packed_weights
from minivllm.layers.norm import RMSNorm
from minivllm.layers.rotary import RotaryEmbedding

# checkpoint projection -> (packed parameter, shard id), for load_packed_weights
PACKED_MODULES = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class DecoderAttention(nn.Module):
    """Self-attention of one decoder layer, [T, hidden_size] -> [T, hidden_size]: the packed q/k/v
    projection (column-parallel: this rank's heads), RMSNorm on each head of q and k when ``qk_norm``
    builds one (Qwen3), rotary embedding (``rotary_emb``: the model's, shared by its layers; without one a
    table of its own), :class:`Attention` over the paged KV cache, and the output projection
    (row-parallel, all-reduced). The output projection has a bias when ``config.attention_bias`` is set;
    q/k/v when that or ``qkv_bias`` is."""

    def __init__(
        self,
        config,
        ctx: ModelContext,
        qkv_bias: bool = False,
        qk_norm: Callable[[int], nn.Module] | None = None,
        rotary_emb: RotaryEmbedding | None = None,
    ):
        super().__init__()
        self.head_dim = head_dim(config)
        bias = getattr(config, "attention_bias", False)
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            config.num_attention_heads,
            num_kv_heads(config),
            bias=qkv_bias or bias,
            tp=ctx.tp,
        )
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias, tp=ctx.tp
        )
        self.q_norm = qk_norm(self.head_dim) if qk_norm else None
        self.k_norm = qk_norm(self.head_dim) if qk_norm else None
        # the model's table, shared by its layers (see rotary.py); a table of its own without one
        if rotary_emb is None:
            rotary_emb = RotaryEmbedding(config, self.head_dim, ctx.max_model_len)
        self.rotary_emb = rotary_emb
        # this rank's heads: QKVParallelLinear knows how many it holds
        self.attn = Attention(
            self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, self.head_dim, self.head_dim**-0.5, ctx.attn_backend
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.sizes, dim=-1)
        q = q.view(-1, self.attn.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(-1, self.attn.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, meta))


class GatedMLP(nn.Module):
    """[T, hidden_size] -> [T, hidden_size]: ``down(act(gate(x), up(x)))``, gate and up packed in one
    column-parallel projection, down row-parallel. ``act`` is a gated activation over the packed halves
    (:class:`SiluAndMul`, :class:`GeluAndMul`). Biases when ``config.mlp_bias`` is set."""

    def __init__(self, config, ctx: ModelContext, act: nn.Module):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, bias=bias, tp=ctx.tp
        )
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=bias, tp=ctx.tp)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    """A pre-norm decoder layer: ``h += attn(norm(h)); h += mlp(norm(h))``. The residual stream is carried
    un-normalised between layers and added inside the next norm (the norms' fused residual path), so
    :meth:`forward` takes and returns (hidden, residual); the first layer gets ``residual=None``."""

    def __init__(
        self, self_attn: nn.Module, mlp: nn.Module, input_layernorm: RMSNorm, post_attention_layernorm: RMSNorm
    ):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderForCausalLM(Model):
    """A Llama-shaped causal LM: vocabulary-parallel embeddings, ``num_hidden_layers`` of
    :class:`DecoderLayer`, a final RMSNorm and the LM head (tied to the embeddings when the config says so).

    What differs between relatives is set by subclasses:

    - ``qkv_bias``: biases on q/k/v even when ``config.attention_bias`` is off (Qwen2);
    - ``qk_norm``: RMSNorm on each head of q and k (Qwen3);
    - ``norm_unit_offset``: every norm scales by ``1 + weight`` (Gemma; see :class:`RMSNorm`);
    - :meth:`activation`: the MLP's gated activation (SiLU from ``config.hidden_act``);
    - :meth:`embed`: token ids to the first hidden states (Gemma scales them).
    """

    qkv_bias = False
    qk_norm = False
    norm_unit_offset = False
    packed_modules = PACKED_MODULES

    def __init__(self, config, ctx: ModelContext):
        super().__init__(config, ctx)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, ctx.tp)
        self.rotary_emb = RotaryEmbedding(config, head_dim(config), ctx.max_model_len)  # one for all layers
        self.layers = nn.ModuleList(self.decoder_layer() for _ in range(config.num_hidden_layers))
        self.norm = self.rms_norm(config.hidden_size)
        self.tie_word_embeddings = getattr(config, "tie_word_embeddings", False)
        tie = self.embed_tokens if self.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, ctx.tp, tie=tie)

    def rms_norm(self, size: int) -> RMSNorm:
        return RMSNorm(size, self.config.rms_norm_eps, unit_offset=self.norm_unit_offset)

    def activation(self) -> nn.Module:
        """The MLP's gated activation; called once per layer while the model is built."""
        if self.config.hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {self.config.hidden_act!r}")
        return SiluAndMul()

    def decoder_layer(self) -> DecoderLayer:
        config, ctx = self.config, self.ctx
        attn = DecoderAttention(
            config,
            ctx,
            qkv_bias=self.qkv_bias,
            qk_norm=self.rms_norm if self.qk_norm else None,
            rotary_emb=self.rotary_emb,
        )
        return DecoderLayer(
            attn,
            GatedMLP(config, ctx, self.activation()),
            self.rms_norm(config.hidden_size),
            self.rms_norm(config.hidden_size),
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] token ids -> [T, hidden_size], the input of the first layer."""
        return self.embed_tokens(input_ids)

    def forward(self, input_ids, positions, meta):
        hidden, residual = self.embed(input_ids), None
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


class LlamaForCausalLM(DecoderForCausalLM):
    """Llama itself: the decoder with no switch set."""
