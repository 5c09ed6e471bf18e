"""The model runner: owns the model, the KV cache tensors and the sampler; runs one step at a time."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from minivllm.core import plugins
from minivllm.core.cuda_graphs import DecodeGraphs
from minivllm.core.interfaces import AttentionMetadata, ModelContext, SamplingBatch, ScheduledBatch
from minivllm.core.interfaces.attention import Attention
from minivllm.core.kv_cache import KVCache
from minivllm.core.memory_budget import cuda_kv_budget
from minivllm.core.parallel.tensor_parallel import TensorParallel
from minivllm.core.runner_setup import RunnerSetup, resolve_dtype
from minivllm.core.sampling import compute_logprobs, needs_processing, process_logits, to_device
from minivllm.core.sequence import Sequence
from minivllm.core.step import StepFuture, StepOutput
from minivllm.core.structured_output import StepMask
from minivllm.core.utils import cdiv, default_dtype

logger = logging.getLogger(__name__)


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S] rows of the hidden states whose next token is sampled
    sample_seqs: list[Sequence]


class ModelRunner:
    def __init__(self, setup: RunnerSetup, tp: TensorParallel = TensorParallel()):
        config, checkpoint, spec = setup.config, setup.checkpoint, setup.spec
        self.config = config
        self.device = config.torch_device
        self.max_model_len = max_model_len = setup.max_model_len
        if self.device.type == "cuda":
            # device memory in use before this runner allocates anything: other processes and this
            # process's CUDA context; sizing the KV cache counts only what comes on top of it
            free, total = torch.cuda.mem_get_info(self.device)
            self._baseline_used = total - free - torch.cuda.memory_reserved(self.device)
        self.dtype = resolve_dtype(config, checkpoint, self.device)
        if config.quantization == "gguf" and checkpoint.gguf is None:
            raise ValueError(
                "quantization='gguf' keeps the weights of a GGUF file quantized: "
                f"{config.model!r} is not one minivllm reads itself"
            )
        self.block_size = config.kvcache_block_size
        num_heads = tp.shard(spec.num_heads, "num_attention_heads")
        num_kv_heads, _ = tp.shard_kv_heads(spec.num_kv_heads)
        backend_cls = plugins.attention_backends.get(config.resolved_attention_backend)
        self.attn_backend = backend_cls(num_heads, num_kv_heads, spec.head_dim, self.block_size, self.dtype)
        model_cls = plugins.models.get(checkpoint.architecture)
        ctx = ModelContext(attn_backend=self.attn_backend, tp=tp, max_model_len=max_model_len)
        with torch.device(self.device), default_dtype(self.dtype):
            self.model = model_cls(checkpoint.hf_config, ctx)
        if config.quantization == "fp8":
            for module in self.model.modules():  # the linear layers: see layers/fp8_linear.py
                if callable(use_fp8 := getattr(module, "use_fp8", None)):
                    use_fp8()
        if checkpoint.load_format == "dummy":
            self._init_dummy_weights(config.seed)
        else:
            self.model.load_weights(checkpoint.weights(self.dtype, config.quantization))
        self.model.eval()
        if config.quantization != "none" or (self.device.type == "cpu" and config.cpu_weight_prepack):
            for module in list(self.model.modules()):  # the layers that keep a quantized or oneDNN-packed weight
                if callable(pack := getattr(module, "pack_weights", None)):
                    pack()
        self.vocab_size = spec.vocab_size
        self.sampler = plugins.samplers.get(config.sampler)(spec.vocab_size, self.device, config.seed)
        # the last step's sampled tokens on the device, and each sampling sequence's row in them: the
        # next step reads pending tokens there (see prepare)
        self._last_sampled = torch.empty(0, dtype=torch.int64)
        self._last_rows: dict[int, int] = {}
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.kv_cache = KVCache(layers, self.block_size, self.dtype, config.kv_cache_dtype == "fp8", self.device)
        self.graphs: DecodeGraphs | None = None
        self.use_cuda_graphs = (
            self.device.type == "cuda" and not config.enforce_eager and self.attn_backend.supports_cuda_graphs
        )

    def _init_dummy_weights(self, seed: int) -> None:
        g = torch.Generator(device=self.device).manual_seed(seed)
        for param in self.model.parameters():
            param.data.uniform_(-0.05, 0.05, generator=g)

    # --- KV cache ---------------------------------------------------------------------------

    @property
    def block_bytes(self) -> int:
        """Bytes of K and V for one block across all layers."""
        return self.kv_cache.block_bytes

    def num_blocks_from_memory(self, max_num_seqs: int, max_model_len: int) -> int:
        """How many blocks fit: a fixed budget on CPU, ``gpu_memory_utilization`` of the GPU on CUDA."""
        useful = max_num_seqs * cdiv(max_model_len, self.block_size)  # more blocks than this are never used
        if self.device.type == "cpu":
            budget = int(self.config.cpu_kvcache_space_gib * 2**30)
        else:
            budget = cuda_kv_budget(self)
        num_blocks = min(budget // self.block_bytes, useful)
        if num_blocks < 1:
            raise ValueError(
                "no memory is left for the KV cache; raise gpu_memory_utilization or lower max_num_batched_tokens"
            )
        return num_blocks

    def allocate_kv_cache(self, num_blocks: int, capture: bool = True) -> None:
        """Allocate the cache for ``num_blocks`` blocks, bind each attention layer's slice, and capture
        the decode CUDA graphs (they hold the cache's addresses)."""
        self.graphs = None
        self.kv_cache.allocate(num_blocks)
        if capture and num_blocks > 0 and self.use_cuda_graphs:
            self.graphs = DecodeGraphs(
                self.model,
                self.attn_backend,
                self.config.max_num_seqs,
                cdiv(self.max_model_len, self.block_size),
                self.device,
            )
            self.graphs.capture()

    # --- one step -----------------------------------------------------------------------------

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """Flatten the batch into token, position and attention-metadata tensors: two host-to-device
        copies, one of the int64 fields and one of the int32 fields. A token the host does not know yet
        (pending: sampled by the previous step, see engine.py) is taken on the device from that step's
        sampled tokens."""
        bs = self.block_size
        input_ids, positions, slots, logits_indices, sample_seqs = [], [], [], [], []
        gather_dst, gather_src = [], []  # input rows of pending tokens; their rows in the last step's tokens
        query_start, seq_lens, tables = [0], [], []  # tables: the block tables, flat and zero-padded
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        padding = [0] * max_blocks
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            end = start + n
            table = seq.block_table
            tables += table
            tables += padding[len(table) :]
            known = len(seq.token_ids)
            if n == 1:  # decode: plain Python beats numpy for one token
                input_ids.append(seq.token_ids[start] if start < known else 0)
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                input_ids += seq.token_ids[start:end]
                input_ids += [0] * (end - max(start, known))
                pos = np.arange(start, end)
                positions += pos.tolist()
                slots += (np.asarray(table)[pos // bs] * bs + pos % bs).tolist()
            if end > known:  # the last position holds the pending token (never more than one)
                gather_dst.append(len(input_ids) - 1)
                gather_src.append(self._last_rows[seq.seq_id])
            query_start.append(query_start[-1] + n)
            seq_lens.append(end)
            if batch.samples(seq, n):
                logits_indices.append(query_start[-1] - 1)
                sample_seqs.append(seq)
        int64 = self._packed([input_ids, positions, slots, logits_indices, gather_dst, gather_src], np.int64)
        input_ids, positions, slots, logits_indices, gather_dst, gather_src = int64
        if len(gather_dst):
            input_ids.index_copy_(0, gather_dst, self._last_sampled.index_select(0, gather_src))
        query_start_loc, seq_lens_t, tables = self._packed([query_start, seq_lens, tables], np.int32)
        meta = AttentionMetadata(
            query_start_loc=query_start_loc,
            seq_lens=seq_lens_t,
            block_tables=tables.view(len(batch), max_blocks),
            slot_mapping=slots,
            max_query_len=max(batch.num_new_tokens),
            max_seq_len=max(seq_lens),
            query_start_loc_host=query_start,
            seq_lens_host=seq_lens,
        )
        return StepInputs(
            input_ids=input_ids, positions=positions, meta=meta, logits_indices=logits_indices, sample_seqs=sample_seqs
        )

    def _packed(self, parts: list, dtype) -> list[torch.Tensor]:
        """Copy ``parts`` to the device in one transfer; returns a view per part. Each part starts on a
        64-byte boundary, so Triton's alignment specialisation (and its compiled kernels) never change."""
        sizes = [len(p) for p in parts]
        starts = np.cumsum([0] + [cdiv(n, 16) * 16 for n in sizes])
        buffer = np.zeros(starts[-1], dtype=dtype)
        for part, start, n in zip(parts, starts, sizes):
            buffer[start : start + n] = part
        tensor = torch.from_numpy(buffer)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return [tensor[start : start + n] for start, n in zip(starts, sizes)]

    @torch.inference_mode()
    def _forward(self, batch: ScheduledBatch, inputs: StepInputs | None = None) -> torch.Tensor:
        """The eager forward pass over the batch; hidden states [T, hidden]."""
        inputs = inputs or self.prepare(batch)
        self.attn_backend.prepare(inputs.meta)
        return self.model(inputs.input_ids, inputs.positions, inputs.meta)

    @torch.inference_mode()
    def submit(self, batch: ScheduledBatch, fetch: bool = True, mask: StepMask = None) -> StepFuture:
        """Queue one step on the device: the forward pass, then sampling for the sequences whose new
        tokens reach their end (core logits processing, the sampler, logprobs). Returns at once on CUDA;
        ``result()`` of what it returns waits for the tokens. ``fetch=False`` (the other tensor-parallel
        ranks) skips bringing them to the host. ``mask``: the tokens structured-output grammars allow, or a function
        that gives them, called once the forward pass is queued (the host makes the mask while the device runs)."""
        inputs = self.prepare(batch)
        meta = inputs.meta
        if self.graphs is not None and meta.is_decode_only and meta.num_seqs <= self.graphs.max_batch_size:
            hidden = self.graphs.run(inputs.input_ids, inputs.positions, meta)
        else:
            hidden = self._forward(batch, inputs)
        seqs = inputs.sample_seqs
        if not seqs:
            return StepFuture([])
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [S, V] in the model's dtype
        if callable(mask):
            mask = mask()
        params = [seq.params for seq in seqs]
        sampling = SamplingBatch(params, [seq.num_generated_tokens for seq in seqs], self.vocab_size)
        processed = logits
        if needs_processing(seqs, mask):
            pending = None
            if any(seq.num_pending_tokens for seq in seqs):  # a row's pending token is its last input token
                has = to_device([seq.num_pending_tokens > 0 for seq in seqs], self.device)
                pending = torch.where(has, inputs.input_ids[inputs.logits_indices], self.vocab_size)
            processed = process_logits(logits, seqs, pending, mask)
        tokens = self.sampler.sample(processed, sampling)
        self._last_sampled, self._last_rows = tokens, {seq.seq_id: row for row, seq in enumerate(seqs)}
        if not fetch:
            return StepFuture([])
        return StepFuture([seq.seq_id for seq in seqs], tokens, compute_logprobs(logits, tokens, sampling))

    def execute(self, batch: ScheduledBatch) -> StepOutput:
        """:meth:`submit`, waiting for the result."""
        return self.submit(batch).result()
