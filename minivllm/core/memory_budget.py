"""How much GPU memory the KV cache may take: the runner's largest steps are run once on scratch blocks and
their peaks measured (see :func:`cuda_kv_budget`). The model runner calls it when the cache is sized from
memory (``num_kvcache_blocks=-1`` on CUDA), with itself as ``runner`` (a ModelRunner: not imported here,
which would make a circle)."""

from __future__ import annotations

import gc
import logging

import torch

from minivllm.core.interfaces import ScheduledBatch
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.core.utils import cdiv

logger = logging.getLogger("minivllm.core.runner")


def cuda_kv_budget(runner) -> int:
    """Bytes left for the KV cache so that this process's peak stays within
    ``gpu_memory_utilization`` of the device: weights, the activation peak of the largest prefill and
    of the largest decode batch (sampler included), the CUDA-graph pool (about one decode batch's
    activations) and non-torch memory (cuBLAS, Triton modules) are subtracted; memory that other
    processes use is not."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    weights = torch.cuda.memory_reserved()
    prefill, decode = profile_batches(runner)
    runner.allocate_kv_cache(max(b.seqs[-1].block_table[-1] for b in (prefill, decode)) + 1, capture=False)
    scratch = torch.cuda.memory_reserved()
    peaks = []
    for run in (lambda: runner.execute(prefill), lambda: runner.execute(decode), lambda: runner._forward(decode)):
        torch.cuda.empty_cache()  # so that each peak counts only what its own run needs
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_reserved() - scratch)
    runner.allocate_kv_cache(0, capture=False)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    non_torch = max(0, total - free - torch.cuda.memory_reserved() - runner._baseline_used)
    # the graphs' pool holds the largest decode forward's activations plus every size's outputs:
    # measured at about twice one forward's peak
    graph_pool = 2 * peaks[2] if runner.use_cuda_graphs else 0
    budget = int(total * runner.config.gpu_memory_utilization) - weights - max(peaks) - graph_pool - non_torch
    gib = 2**30
    logger.info(
        "GPU memory: %.2f GiB total x %.2f; this process: weights %.2f, activations %.2f (prefill %.2f, "
        "decode %.2f), CUDA graphs %.2f, non-torch %.2f GiB -> %.2f GiB for the KV cache (others use %.2f)",
        total / gib,
        runner.config.gpu_memory_utilization,
        weights / gib,
        max(peaks[:2]) / gib,
        peaks[0] / gib,
        peaks[1] / gib,
        graph_pool / gib,
        non_torch / gib,
        budget / gib,
        runner._baseline_used / gib,
    )
    return budget


def profile_batches(runner) -> tuple[ScheduledBatch, ScheduledBatch]:
    """The largest prefill the scheduler can build (``max_num_batched_tokens`` new tokens in as few
    sequences as possible) and the largest decode batch (``max_num_seqs`` sequences sampling with
    top-k/top-p, the sampler's heaviest path), on consecutive scratch blocks."""
    cfg = runner.config
    max_len = min(runner.max_model_len - 1, cfg.max_num_batched_tokens)
    lengths, left = [], cfg.max_num_batched_tokens
    while left > 0 and len(lengths) < cfg.max_num_seqs:
        lengths.append(min(left, max_len))
        left -= lengths[-1]
    prefill, first = ScheduledBatch(), 0
    for n in lengths:
        seq = Sequence([0] * n, SamplingParams(max_tokens=1))
        seq.block_table = list(range(first, first + cdiv(n, runner.block_size)))
        first += len(seq.block_table)
        prefill.add(seq, n)
    decode = ScheduledBatch()
    heavy = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_tokens=2)
    for i in range(cfg.max_num_seqs):
        seq = Sequence([0, 0], heavy)
        seq.num_computed_tokens = 1
        seq.block_table = [i]
        decode.add(seq, 1)
    return prefill, decode
