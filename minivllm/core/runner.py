"""The model runner: owns the model, the KV cache tensors and the sampler; runs one step at a time."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from minivllm.core import plugins
from minivllm.core.checkpoint import Checkpoint
from minivllm.core.config import EngineConfig
from minivllm.core.interfaces import AttentionMetadata, ModelContext, ScheduledBatch
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.layers import Attention, TensorParallel

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def resolve_dtype(config: EngineConfig, checkpoint: Checkpoint, device: torch.device) -> torch.dtype:
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    dtype = checkpoint.dtype
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        return torch.float32  # half-precision matmuls are slow or missing on many CPUs
    return dtype


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S] rows of the hidden states whose next token is sampled
    sample_seqs: list[Sequence]


class ModelRunner:
    def __init__(self, config: EngineConfig, checkpoint: Checkpoint, max_model_len: int,
                 tp: TensorParallel = TensorParallel()):
        self.config = config
        self.device = config.torch_device
        self.dtype = resolve_dtype(config, checkpoint, self.device)
        self.block_size = config.kvcache_block_size
        hf = checkpoint.hf_config
        self.head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        self.num_layers = hf.num_hidden_layers
        num_heads = tp.shard(hf.num_attention_heads, "num_attention_heads")
        self.num_kv_heads = max(1, hf.num_key_value_heads // tp.size)
        backend_cls = plugins.attention_backends.get(config.resolved_attention_backend)
        self.attn_backend = backend_cls(num_heads, self.num_kv_heads, self.head_dim, self.block_size, self.dtype)
        model_cls = plugins.models.get(checkpoint.architecture)
        ctx = ModelContext(attn_backend=self.attn_backend, tp=tp, max_model_len=max_model_len)
        with torch.device(self.device), default_dtype(self.dtype):
            self.model = model_cls(hf, ctx)
        if checkpoint.load_format == "dummy":
            self._init_dummy_weights(config.seed)
        else:
            self.model.load_weights(checkpoint.weights())
        self.model.eval()
        self.sampler = plugins.samplers.get(config.sampler)(hf.vocab_size, self.device, config.seed)
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.kv_cache = torch.empty(0)

    def _init_dummy_weights(self, seed: int) -> None:
        g = torch.Generator(device=self.device).manual_seed(seed)
        for param in self.model.parameters():
            param.data.uniform_(-0.05, 0.05, generator=g)

    # --- KV cache ---------------------------------------------------------------------------

    @property
    def block_bytes(self) -> int:
        """Bytes of K and V for one block across all layers."""
        elem = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    def num_blocks_from_memory(self, max_num_seqs: int, max_model_len: int) -> int:
        """How many blocks fit: a fixed budget on CPU, ``gpu_memory_utilization`` of the GPU on CUDA."""
        useful = max_num_seqs * -(-max_model_len // self.block_size)  # more blocks than this are never used
        if self.device.type == "cpu":
            budget = int(self.config.cpu_kvcache_space_gib * 2**30)
        else:
            budget = self._cuda_kv_budget()
        num_blocks = min(budget // self.block_bytes, useful)
        if num_blocks < 1:
            raise ValueError("no memory is left for the KV cache; raise gpu_memory_utilization or lower "
                             "max_num_batched_tokens")
        return num_blocks

    def _cuda_kv_budget(self) -> int:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        self._profile_run()
        activations = torch.cuda.max_memory_allocated() - before
        free, total = torch.cuda.mem_get_info()
        return int(total * self.config.gpu_memory_utilization - (total - free) - activations)

    def _profile_run(self) -> None:
        """A forward pass over the largest batch the scheduler can build, on a scratch cache."""
        max_len = min(self.config.max_model_len, self.config.max_num_batched_tokens)
        lengths = []
        left = self.config.max_num_batched_tokens
        while left > 0 and len(lengths) < self.config.max_num_seqs:
            lengths.append(min(left, max_len))
            left -= lengths[-1]
        blocks_per_seq = [-(-n // self.block_size) for n in lengths]
        self.allocate_kv_cache(sum(blocks_per_seq))
        batch, first = ScheduledBatch(), 0
        for n, nb in zip(lengths, blocks_per_seq):
            seq = Sequence([0] * n, SamplingParams(max_tokens=1))
            seq.block_table = list(range(first, first + nb))
            first += nb
            batch.add(seq, n)
        self.execute(batch)
        torch.cuda.synchronize()
        self.allocate_kv_cache(0)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Allocate the cache for ``num_blocks`` blocks and bind each attention layer's slice."""
        self.kv_cache = torch.empty(0)
        self.kv_cache = torch.zeros(2, self.num_layers, num_blocks, self.block_size, self.num_kv_heads,
                                    self.head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.attention_layers):
            layer.k_cache, layer.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]

    # --- one step -----------------------------------------------------------------------------

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """Flatten the batch into token, position and attention-metadata tensors (one copy each)."""
        bs = self.block_size
        input_ids, positions, slots, logits_indices, sample_seqs = [], [], [], [], []
        query_start, seq_lens = [0], []
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        block_tables = np.zeros((len(batch), max_blocks), dtype=np.int32)
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed_tokens
            end = start + n
            input_ids.extend(seq.token_ids[start:end])
            pos = np.arange(start, end)
            positions.append(pos)
            table = np.asarray(seq.block_table, dtype=np.int64)
            block_tables[i, : len(table)] = table
            slots.append(table[pos // bs] * bs + pos % bs)
            query_start.append(query_start[-1] + n)
            seq_lens.append(end)
            if end == len(seq):
                logits_indices.append(query_start[-1] - 1)
                sample_seqs.append(seq)

        def to_device(array, dtype):
            return torch.as_tensor(np.asarray(array), dtype=dtype).to(self.device, non_blocking=True)

        meta = AttentionMetadata(
            query_start_loc=to_device(query_start, torch.int32),
            seq_lens=to_device(seq_lens, torch.int32),
            block_tables=to_device(block_tables, torch.int32),
            slot_mapping=to_device(np.concatenate(slots), torch.int64),
            max_query_len=max(batch.num_new_tokens),
            max_seq_len=max(seq_lens),
            query_start_loc_host=query_start,
            seq_lens_host=seq_lens,
        )
        return StepInputs(
            input_ids=to_device(input_ids, torch.int64),
            positions=to_device(np.concatenate(positions), torch.int64),
            meta=meta,
            logits_indices=to_device(logits_indices, torch.int64),
            sample_seqs=sample_seqs,
        )

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[int]:
        """Run one step; returns the sampled token of each sequence whose new tokens reach its end,
        in batch order."""
        inputs = self.prepare(batch)
        self.attn_backend.prepare(inputs.meta)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        if not inputs.sample_seqs:
            return []
        logits = self.model.compute_logits(hidden[inputs.logits_indices]).float()
        params = [seq.params for seq in inputs.sample_seqs]
        steps = [seq.num_output_tokens for seq in inputs.sample_seqs]
        return self.sampler.sample(logits, params, steps).tolist()
