"""Block allocator with reference counts and automatic prefix caching.

Every full block is identified by an xxhash chained over the previous block's hash and its own token
ids, so equal hashes mean equal prefixes. A hit is confirmed against the stored token ids, so a hash
collision is a miss, never wrong output. Blocks whose reference count drops to zero keep their
contents and stay findable until they are reused, least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import xxhash

from minivllm.core.interfaces import KVAllocator
from minivllm.core.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None


def block_hash(prev_hash: int | None, token_ids) -> int:
    h = xxhash.xxh3_64()
    if prev_hash is not None:
        h.update(prev_hash.to_bytes(8, "little"))
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.intdigest()


class PrefixCacheAllocator(KVAllocator):
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self.blocks = [Block(i) for i in range(num_blocks)]
        # unreferenced blocks, least recently freed first: the order in which they are reused
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.num_hashed: dict[int, int] = {}  # seq id -> how many of its leading blocks are hashed

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def _take(self, block: Block) -> None:
        if block.ref_count == 0:
            del self.free_queue[block.block_id]
        block.ref_count += 1

    def match_prefix(self, seq: Sequence) -> int:
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        prev = None
        # leave the last token out, so at least one token is computed and yields logits
        for i in range((len(seq) - 1) // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            prev = block_hash(prev, tokens)
            block_id = self.cached.get(prev)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            self._take(self.blocks[block_id])
            seq.block_table.append(block_id)
        self.num_hashed[seq.seq_id] = len(seq.block_table)
        return len(seq.block_table) * self.block_size

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        needed = self.blocks_for(num_tokens) - len(seq.block_table)
        if needed > len(self.free_queue):
            return False
        for _ in range(needed):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None and self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]  # evicted: its contents are about to be overwritten
            block.hash, block.token_ids, block.ref_count = None, None, 1
            seq.block_table.append(block_id)
        if self.enable_prefix_caching:
            self._publish(seq, num_tokens)
        return True

    def _publish(self, seq: Sequence, num_tokens: int) -> None:
        """Hash the blocks that ``num_tokens`` fills with tokens the host knows (a pending token's block
        is hashed by a later call), so later sequences can reuse them."""
        done = self.num_hashed.get(seq.seq_id, 0)
        full = min(num_tokens, len(seq.token_ids)) // self.block_size
        for i in range(done, full):
            block = self.blocks[seq.block_table[i]]
            prev = self.blocks[seq.block_table[i - 1]].hash if i else None
            block.token_ids = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            block.hash = block_hash(prev, block.token_ids)
            self.cached.setdefault(block.hash, block.block_id)
        self.num_hashed[seq.seq_id] = max(done, full)

    def free(self, seq: Sequence) -> None:
        # tail blocks first, so that they are reused before the prefix blocks that others may share
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = None
        seq.block_table.clear()
        self.num_hashed.pop(seq.seq_id, None)
