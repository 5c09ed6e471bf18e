"""The plainest block allocator: fixed blocks from a free list, one owner each, no hashing, no reuse.

The baseline that ``prefix_cache`` is measured against (``minivllm bench --ab
kv_allocator=simple,prefix_cache``): it never matches a prefix, so every prompt token is computed,
and it spends no time hashing blocks. ``enable_prefix_caching`` is ignored.
"""

from __future__ import annotations

from collections import deque

from minivllm.core.interfaces import KVAllocator
from minivllm.core.sequence import Sequence


class SimpleAllocator(KVAllocator):
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        # freed blocks go to the back: reuse order is first in, first out
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def match_prefix(self, seq: Sequence) -> int:
        return 0

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        needed = self.blocks_for(num_tokens) - len(seq.block_table)
        if needed > len(self.free_blocks):
            return False
        seq.block_table.extend(self.free_blocks.popleft() for _ in range(needed))
        return True

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table.clear()
