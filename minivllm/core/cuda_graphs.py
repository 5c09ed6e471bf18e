"""CUDA graphs for decode steps: one graph per padded batch size, all in one memory pool.

A decode step's kernels depend only on the batch size once the attention backend's grid does (see
``AttentionBackend.supports_cuda_graphs``), so each size is captured once over static input buffers;
a step copies its inputs into the buffers' first rows, pads the rest (slot -1: nothing is written;
context of one token: a harmless read of block ``block_tables[row, 0]``) and replays.
"""

from __future__ import annotations

import logging
import time

import torch

from minivllm.core.interfaces import AttentionBackend, AttentionMetadata, Model

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's batch sizes: 1, 2, 4, then steps of 8 to 256 and of 16 beyond, capped at 512."""
    cap = min(max_num_seqs, 512)
    sizes = [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, 513, 16))
    sizes = [s for s in sizes if s < cap]
    return sizes + [cap]


class DecodeGraphs:
    def __init__(
        self, model: Model, backend: AttentionBackend, max_num_seqs: int, max_blocks_per_seq: int, device: torch.device
    ):
        self.model = model
        self.backend = backend
        self.sizes = capture_sizes(max_num_seqs)
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    def _meta(self, bs: int) -> AttentionMetadata:
        meta = AttentionMetadata(
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            slot_mapping=self.slot_mapping[:bs],
            max_query_len=1,
            max_seq_len=self.block_tables.shape[1],
            query_start_loc_host=list(range(bs + 1)),
            seq_lens_host=[1] * bs,
        )
        self.backend.prepare(meta)
        return meta

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first so the smaller ones reuse its pool memory."""
        start, reserved = time.perf_counter(), torch.cuda.memory_reserved()
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.sizes):
            meta = self._meta(bs)
            args = (self.input_ids[:bs], self.positions[:bs], meta)
            self.model(*args)  # warm-up: compiles kernels outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self.model(*args)
            self.graphs[bs] = graph
        torch.cuda.synchronize()
        logger.info(
            "captured %d CUDA graphs for decode batches of 1..%d in %.1f s (%.2f GiB)",
            len(self.sizes),
            self.max_batch_size,
            time.perf_counter() - start,
            (torch.cuda.memory_reserved() - reserved) / 2**30,
        )

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Replay the smallest graph that holds the batch; returns hidden states [B, hidden]."""
        b = input_ids.shape[0]
        bs = next(s for s in self.sizes if s >= b)
        self.input_ids[:b] = input_ids
        self.positions[:b] = positions
        self.slot_mapping[:b] = meta.slot_mapping
        self.slot_mapping[b:bs] = -1
        self.seq_lens[:b] = meta.seq_lens
        self.seq_lens[b:bs] = 1
        self.block_tables[:b, : meta.block_tables.shape[1]] = meta.block_tables
        self.graphs[bs].replay()
        return self.outputs[bs][:b]
