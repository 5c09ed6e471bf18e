"""KV allocator contracts, checked over long random sequences of the calls a scheduler makes.

The kit plays the scheduler: it admits sequences (``match_prefix``, then ``allocate`` for a first chunk,
``free`` when that fails), grows them (tokens appended, ``allocate`` for more) and frees them (finish,
abort or preemption; the engine may free a sequence twice, the second time with its table empty), on
prompts drawn from a tiny alphabet so that prefixes often repeat and often
differ by one token. After every call it compares the allocator with what a correct one must report: the
blocks it counts free plus the blocks live sequences hold make up the cache, and a block is shared only
where ``match_prefix`` attached it for identical tokens. A failing sequence of calls is shrunk to the
fewest calls that still fail, and printed as the reproduction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from minivllm.core.interfaces import KVAllocator
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.testing.kit import Contract, ContractFailure, registry

ACCOUNTING, REUSE, LEAKS = "accounting", "prefix_reuse", "no_leaks"


@dataclass(frozen=True)
class Op:
    kind: str  # "add" (match_prefix, allocate), "grow" (append tokens, allocate) or "free"
    seq: int  # the kit's name for the sequence
    tokens: tuple[int, ...] = ()  # add: the prompt; grow: the tokens appended
    chunk: int = 0  # tokens past those already allocated to allocate for

    def __str__(self) -> str:
        if self.kind == "add":
            return (
                f"s{self.seq} = Sequence({list(self.tokens)}); m = match_prefix(s{self.seq}); "
                f"allocate(s{self.seq}, m + {self.chunk}) (free(s{self.seq}) if that fails)"
            )
        if self.kind == "grow":
            return (
                f"s{self.seq}.token_ids += {list(self.tokens)}; allocate(s{self.seq}, {self.chunk} more tokens) "
                f"(free(s{self.seq}) if that fails: preemption)"
            )
        return f"free(s{self.seq})"  # a second free of the same sequence finds its table empty


class Violation(Exception):
    def __init__(self, check: str, index: int, message: str):
        super().__init__(f"after call {index + 1}: {message}")
        self.check, self.index = check, index


class Scheduler:
    """The scheduler's side of the allocator contract, checking ``checks`` after every call."""

    def __init__(self, allocator: KVAllocator, checks: set[str]):
        self.alloc, self.checks = allocator, checks
        self.seqs: dict[int, Sequence] = {}  # live sequences
        self.freed: dict[int, Sequence] = {}  # sequences freed once: the engine may free them again
        self.allocated: dict[int, int] = {}  # tokens each live sequence has blocks for
        self.contents: dict[int, tuple[int, ...]] = {}  # block -> the tokens up to its end it was filled with
        self.index = 0

    def fail(self, check: str, message: str) -> None:
        if check in self.checks or check == "basic":
            raise Violation(check, self.index, message)

    def run(self, ops: list[Op]) -> None:
        for self.index, op in enumerate(ops):
            if op.kind == "add" and op.seq not in self.seqs:
                self._add(op)
            elif op.kind == "grow" and op.seq in self.seqs:
                self._grow(op)
            elif op.kind == "free" and op.seq in self.seqs:
                self._free(op.seq)
            elif op.kind == "free" and op.seq in self.freed:
                self.alloc.free(self.freed[op.seq])
            self._account()
        for sid in list(self.seqs):
            self._free(sid)
        if self.alloc.num_free_blocks != self.alloc.num_blocks:
            self.fail(
                LEAKS,
                f"every sequence was freed, yet only {self.alloc.num_free_blocks} of "
                f"{self.alloc.num_blocks} blocks are free",
            )

    def _add(self, op: Op) -> None:
        seq = Sequence(list(op.tokens), SamplingParams())
        hit = self.alloc.match_prefix(seq)
        bs = self.alloc.block_size
        if hit % bs or not 0 <= hit < len(seq) or len(seq.block_table) != hit // bs:
            self.fail(
                REUSE,
                f"match_prefix returned {hit} for a {len(seq)}-token prompt with block table "
                f"{seq.block_table}: hits are whole blocks, attached, and leave a token to compute",
            )
        if hit and not self.alloc.enable_prefix_caching:
            self.fail(REUSE, f"match_prefix reused {hit} tokens with enable_prefix_caching=False")
        for j, block in enumerate(seq.block_table):
            if self.contents.get(block) != tuple(seq.token_ids[: (j + 1) * bs]):
                self.fail(
                    REUSE,
                    f"match_prefix gave s{op.seq} block {block} for its tokens "
                    f"{j * bs}..{(j + 1) * bs - 1}, "
                    f"but that block holds the KV of other tokens (a prefix is reused only when every "
                    f"token up to the block's end is identical)",
                )
        self.seqs[op.seq] = seq
        self.allocated[op.seq] = hit
        self._account()
        if not self._allocate(op.seq, min(len(seq), hit + op.chunk)):
            self._free(op.seq)

    def _grow(self, op: Op) -> None:
        seq = self.seqs[op.seq]
        seq.token_ids.extend(op.tokens)
        if not self._allocate(op.seq, min(len(seq), self.allocated[op.seq] + op.chunk)):
            self._free(op.seq)  # preemption: the scheduler drops the sequence's KV

    def _allocate(self, sid: int, num_tokens: int) -> bool:
        """allocate() for ``num_tokens``; checks that it succeeds exactly when the free blocks suffice."""
        seq, bs = self.seqs[sid], self.alloc.block_size
        free_expected = self.alloc.num_free_blocks  # checked against the held blocks after every call
        table = list(seq.block_table)
        needed = self.alloc.blocks_for(num_tokens) - len(table)
        held = {b for other, s in self.seqs.items() if other != sid for b in s.block_table}
        ok = self.alloc.allocate(seq, num_tokens)
        if ok != (needed <= free_expected):
            self.fail(
                ACCOUNTING,
                f"allocate(s{sid}, {num_tokens}) returned {ok} needing {max(needed, 0)} blocks "
                f"with {free_expected} free",
            )
        if not ok:
            if seq.block_table != table:
                self.fail(
                    ACCOUNTING,
                    f"allocate(s{sid}, {num_tokens}) returned False but changed the block table "
                    f"from {table} to {seq.block_table}",
                )
            return False
        if seq.block_table[: len(table)] != table or len(seq.block_table) != self.alloc.blocks_for(num_tokens):
            self.fail(
                ACCOUNTING,
                f"allocate(s{sid}, {num_tokens}) turned block table {table} into "
                f"{seq.block_table}; expected {table} grown to "
                f"{self.alloc.blocks_for(num_tokens)} blocks",
            )
        for block in seq.block_table[len(table) :]:
            if not 0 <= block < self.alloc.num_blocks:
                self.fail("basic", f"allocate(s{sid}, {num_tokens}) handed out block {block}, outside the cache")
            if block in held:
                owner = next(o for o, s in self.seqs.items() if o != sid and block in s.block_table)
                self.fail(
                    ACCOUNTING,
                    f"allocate(s{sid}, {num_tokens}) handed out block {block}, which s{owner} still "
                    "holds (freed twice, or while shared)",
                )
            self.contents.pop(block, None)
        self.allocated[sid] = num_tokens
        for j, block in enumerate(seq.block_table):  # the engine writes the tokens' KV right after
            if j * bs < num_tokens and (block not in self.contents or len(self.contents[block]) < (j + 1) * bs):
                self.contents[block] = tuple(seq.token_ids[: min(num_tokens, (j + 1) * bs)])
        return True

    def _free(self, sid: int) -> None:
        seq = self.freed[sid] = self.seqs.pop(sid)
        del self.allocated[sid]
        self.alloc.free(seq)
        if seq.block_table:
            self.fail(LEAKS, f"free(s{sid}) left its block table {seq.block_table}")

    def _account(self) -> None:
        held = {b for s in self.seqs.values() for b in s.block_table}
        free, total = self.alloc.num_free_blocks, self.alloc.num_blocks
        if free + len(held) > total:
            self.fail(
                ACCOUNTING,
                f"{free} blocks are counted free while live sequences hold {len(held)}, "
                f"{free + len(held) - total} more than the {total} blocks: a block in use is "
                "counted free (freed twice, or freed while shared)",
            )
        elif free + len(held) < total:
            self.fail(
                LEAKS,
                f"{free} blocks are free and live sequences hold {len(held)}: "
                f"{total - free - len(held)} of the {total} blocks leaked",
            )


def random_ops(rng: random.Random, num_ops: int, block_size: int) -> list[Op]:
    """Calls in the proportions a busy scheduler makes them, over prompts of a 3-token alphabet."""
    docs = [[rng.randrange(3) for _ in range(4 * block_size)] for _ in range(3)]
    ops, live, freed, next_id = [], [], [], 0
    for _ in range(num_ops):
        roll = rng.random()
        if roll < 0.03 and freed:
            ops.append(Op("free", rng.choice(freed)))  # finish called twice, as the engine may
            continue
        if roll < 0.3 or not live:
            doc = rng.choice(docs)
            keep = rng.randint(0, len(doc))
            tokens = doc[:keep] + [rng.randrange(3) for _ in range(rng.randint(1, 2 * block_size))]
            ops.append(Op("add", next_id, tuple(tokens), rng.randint(1, len(tokens))))
            live.append(next_id)
            next_id += 1
        elif roll < 0.8:
            sid = rng.choice(live)
            ops.append(
                Op(
                    "grow",
                    sid,
                    tuple(rng.randrange(3) for _ in range(rng.randint(0, block_size + 1))),
                    rng.randint(1, 2 * block_size),
                )
            )
        else:
            sid = rng.choice(live)
            live.remove(sid)
            freed.append(sid)
            ops.append(Op("free", sid))
    return ops


def violation(plugin: str, setup: tuple[int, int, bool], ops: list[Op], checks: set[str]) -> Violation | None:
    allocator = registry("kv_allocator").get(plugin)(*setup)
    sim = Scheduler(allocator, checks)
    try:
        sim.run(ops)
    except Violation as v:
        return v
    except Exception as e:  # noqa: BLE001 - a crash inside the allocator breaks the contract under test
        return Violation("crash", sim.index, f"the allocator raised {type(e).__name__}: {e}")
    return None


def shrink(plugin: str, setup, ops: list[Op], checks: set[str], v: Violation) -> tuple[list[Op], Violation]:
    """Drop calls (halves, then quarters, ... then single calls) while the same check still fails."""
    ops = ops[: v.index + 1]
    size = len(ops) // 2
    while size >= 1:
        start, removed = 0, False
        while start < len(ops):
            candidate = ops[:start] + ops[start + size :]
            found = violation(plugin, setup, candidate, checks) if candidate else None
            if found is not None and found.check == v.check:
                ops, v, removed = candidate[: found.index + 1], found, True
            else:
                start += size
        if not removed:
            size //= 2
    return ops, v


def ops_contract(name: str, summary: str, checks: set[str]) -> Contract:
    def run(plugin: str, options: dict) -> None:
        rng = random.Random(0)
        for num_ops in (20, 60, 200, 600, 2000):
            for setup in ((12, 4, True), (12, 4, False), (24, 16, True)):  # num_blocks, block_size, caching
                ops = random_ops(rng, num_ops, setup[1])
                v = violation(plugin, setup, ops, checks)
                if v is not None:
                    ops, v = shrink(plugin, setup, ops, checks, v)
                    calls = "\n".join(f"{i + 1}. {op}" for i, op in enumerate(ops))
                    cls = registry("kv_allocator").get(plugin).__name__
                    reproduction = (
                        f"allocator = {cls}(num_blocks={setup[0]}, "
                        f"block_size={setup[1]}, enable_prefix_caching={setup[2]}); then\n{calls}"
                    )
                    raise ContractFailure(name, str(v), reproduction)

    return Contract("kv_allocator", name, summary, run)


CONTRACTS = [
    ops_contract(
        ACCOUNTING,
        "exact accounting: allocate succeeds exactly when the free blocks suffice, changes "
        "nothing when it fails, and never hands out a block in use",
        {ACCOUNTING},
    ),
    ops_contract(
        REUSE,
        "shared prefixes are reused only when their tokens are identical, in whole blocks, "
        "never with prefix caching off",
        {REUSE},
    ),
    ops_contract(LEAKS, "free releases every block: nothing leaks", {LEAKS}),
]
