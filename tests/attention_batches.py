"""Random paged attention batches, for testing attention backends against the torch reference."""

import random

import torch

from minivllm.core.interfaces import AttentionMetadata
from minivllm.core.utils import cdiv


def make_batch(query_lens, context_lens, block_size, num_blocks, device, seed):
    """Metadata for sequences whose ``query_lens[i]`` new tokens end a context of ``context_lens[i]``,
    each in randomly chosen (shuffled) blocks."""
    rng = random.Random(seed)
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables, slots, starts = [], [], [0]
    for q_len, ctx in zip(query_lens, context_lens):
        n = cdiv(ctx, block_size)
        table = [free.pop() for _ in range(n)]
        tables.append(table)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(ctx - q_len, ctx)]
        starts.append(starts[-1] + q_len)
    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=device)
    return AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(context_lens),
        query_start_loc_host=starts,
        seq_lens_host=list(context_lens),
    )
