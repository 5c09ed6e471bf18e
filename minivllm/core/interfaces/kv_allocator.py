"""KV allocators: which cache blocks each sequence's tokens live in.

``minivllm check-plugin kv_allocator NAME`` checks an implementation against these docstrings
(:mod:`minivllm.testing.kv_allocator`): the free blocks plus the blocks live sequences hold always make
up the cache, and a block is shared only where :meth:`KVAllocator.match_prefix` attached it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from minivllm.core.sequence import Sequence
from minivllm.core.utils import cdiv


class KVAllocator(ABC):
    """Owned by the scheduler, which calls it while it builds each step. Blocks hold ``block_size``
    tokens; a sequence's ``block_table`` lists its blocks in order."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching

    def blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    @property
    @abstractmethod
    def num_free_blocks(self) -> int:
        """Blocks that :meth:`allocate` can hand out now (cached but unreferenced blocks included)."""

    @abstractmethod
    def match_prefix(self, seq: Sequence) -> int:
        """Called once when a sequence with no blocks is first scheduled: attach cached blocks holding a
        prefix of its tokens and return how many tokens they cover (always fewer than all of them,
        so at least one token is computed). Returns 0 when nothing matches or caching is off."""

    @abstractmethod
    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow ``seq.block_table`` to hold its first ``num_tokens`` tokens. Returns False, changing
        nothing, when too few blocks are free. Blocks that become full with known tokens may be
        published for prefix reuse."""

    @abstractmethod
    def free(self, seq: Sequence) -> None:
        """Release the sequence's blocks (on finish, abort or preemption) and clear its block table. A block
        another sequence still shares stays in use. May be called again for a sequence already freed (the
        engine finishes a sequence twice when its last token was in flight): then nothing happens."""
