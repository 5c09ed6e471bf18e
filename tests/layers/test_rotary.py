"""Rotary embedding without Triton: q and k turned as one tensor equal the per-tensor formula, one table
serves every layer of a model, and the CPU reuses a step's lookup only for the same positions tensor."""

import torch
import transformers

from minivllm import LLM
from minivllm.layers import RotaryEmbedding, ops


def rope() -> RotaryEmbedding:
    return RotaryEmbedding(transformers.LlamaConfig(rope_theta=10000.0), head_dim=16, max_positions=64)


def test_q_and_k_turned_together_equal_the_formula():
    torch.manual_seed(0)
    r = rope()
    positions = torch.tensor([0, 5, 63, 7])
    q, k = torch.randn(4, 6, 16), torch.randn(4, 2, 16)
    cos, sin = r.cos[positions].unsqueeze(1), r.sin[positions].unsqueeze(1)
    q_out, k_out = r(positions, q, k)
    assert torch.equal(q_out, q * cos + ops.rotate_half(q) * sin)
    assert torch.equal(k_out, k * cos + ops.rotate_half(k) * sin)
    assert not torch.equal(q_out, q)  # position 0 alone would leave it unchanged


def test_rows_reused_only_for_the_same_positions_tensor():
    r = rope()
    positions = torch.tensor([1, 2, 3])
    first = r.rows(positions, torch.float32)
    assert all(a is b for a, b in zip(r.rows(positions, torch.float32), first))  # the next layer of the step
    assert r.rows(positions, torch.bfloat16)[0].dtype == torch.bfloat16  # another dtype: looked up again
    later = torch.tensor([4, 5, 6])  # the next step
    cos, sin = r.rows(later, torch.float32)
    assert torch.equal(cos, r.cos[later].unsqueeze(1)) and torch.equal(sin, r.sin[later].unsqueeze(1))


def test_the_layers_share_the_model_table(llama_path):
    model = LLM(llama_path, dtype="float32", kvcache_block_size=16, max_model_len=128).engine.executor.runner.model
    assert all(layer.self_attn.rotary_emb is model.rotary_emb for layer in model.layers)
