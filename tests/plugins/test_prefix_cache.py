"""Exact block accounting of the prefix-cache allocator: ref counts, hashes, eviction, collisions."""

from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.plugins.kv_allocators import prefix_cache
from minivllm.plugins.kv_allocators.prefix_cache import PrefixCacheAllocator

BS = 4


def seq(tokens):
    return Sequence(list(tokens), SamplingParams())


def admit(alloc, s):
    cached = alloc.match_prefix(s)
    assert alloc.allocate(s, len(s))
    return cached


def test_allocate_grows_block_table_and_free_returns_blocks():
    alloc = PrefixCacheAllocator(8, BS)
    s = seq(range(10))
    assert admit(alloc, s) == 0
    assert len(s.block_table) == 3 and alloc.num_free_blocks == 5
    s.append(10), s.append(11)
    assert alloc.allocate(s, len(s)) and len(s.block_table) == 3  # 12 tokens still fit in 3 blocks
    s.append(12)
    assert alloc.allocate(s, len(s)) and len(s.block_table) == 4
    alloc.free(s)
    assert s.block_table == [] and alloc.num_free_blocks == 8
    assert all(b.ref_count == 0 for b in alloc.blocks)


def test_allocation_fails_without_change_when_blocks_run_out():
    alloc = PrefixCacheAllocator(3, BS)
    s = seq(range(13))  # needs 4 blocks
    assert not alloc.allocate(s, len(s))
    assert s.block_table == [] and alloc.num_free_blocks == 3


def test_shared_prefix_is_reused_with_reference_counts():
    alloc = PrefixCacheAllocator(10, BS)
    a = seq(range(10))  # full blocks [0..3] and [4..7]
    admit(alloc, a)
    b = seq(list(range(8)) + [99, 98, 97])
    assert admit(alloc, b) == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert [alloc.blocks[i].ref_count for i in a.block_table[:2]] == [2, 2]
    assert alloc.num_free_blocks == 10 - 3 - 1
    alloc.free(a)
    assert [alloc.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    assert alloc.num_free_blocks == 10 - 3


def test_match_always_leaves_a_token_to_compute():
    alloc = PrefixCacheAllocator(10, BS)
    a = seq(range(8))  # exactly two full blocks
    admit(alloc, a)
    alloc.free(a)
    b = seq(range(8))
    assert admit(alloc, b) == 4  # the second block is recomputed so the last token yields logits


def test_freed_blocks_stay_cached_until_evicted_lru():
    alloc = PrefixCacheAllocator(4, BS)
    a = seq(range(0, 9))  # blocks 0, 1, 2; the two full ones are hashed
    admit(alloc, a)
    alloc.free(a)
    assert alloc.num_free_blocks == 4
    # reuse order: block 3 (never used), then a's blocks tail first: 2, 1, 0
    assert list(alloc.free_queue) == [3, 2, 1, 0]
    c = seq(range(100, 108))
    admit(alloc, c)
    assert c.block_table == [3, 2]  # a's full prefix blocks survive
    b = seq(range(0, 9))
    assert alloc.match_prefix(b) == 8 and b.block_table == [0, 1]
    assert alloc.num_free_blocks == 0
    assert not alloc.allocate(b, len(b))  # its third block cannot be had: refused, nothing changed
    assert b.block_table == [0, 1]
    alloc.free(b)
    assert alloc.num_free_blocks == 2


def test_eviction_removes_hash_entry():
    alloc = PrefixCacheAllocator(2, BS)
    a = seq(range(5))
    admit(alloc, a)
    alloc.free(a)
    b = seq(range(50, 58))  # takes both blocks: a's cached block is overwritten
    admit(alloc, b)
    alloc.free(b)
    assert admit(alloc, seq(range(5))) == 0


def test_hash_collision_is_a_miss(monkeypatch):
    monkeypatch.setattr(prefix_cache, "block_hash", lambda prev, tokens: 42)  # every block collides
    alloc = PrefixCacheAllocator(8, BS)
    admit(alloc, seq(range(9)))
    other = seq([7, 7, 7, 7, 7, 7, 7, 7, 7])
    assert admit(alloc, other) == 0  # same hash, different tokens: never reused


def test_prefix_caching_off_never_shares():
    alloc = PrefixCacheAllocator(8, BS, enable_prefix_caching=False)
    a, b = seq(range(9)), seq(range(9))
    admit(alloc, a)
    assert admit(alloc, b) == 0
    assert not set(a.block_table) & set(b.block_table)
    assert all(blk.hash is None for blk in alloc.blocks)


def test_chained_hash_depends_on_the_whole_prefix():
    alloc = PrefixCacheAllocator(8, BS)
    admit(alloc, seq([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    # the second block's tokens match but the first block's do not: no hit at all
    assert admit(alloc, seq([0, 2, 3, 4, 5, 6, 7, 8, 9])) == 0
