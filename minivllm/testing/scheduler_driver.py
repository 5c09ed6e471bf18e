"""The scheduler kit's engine: it drives a scheduler as ``engine.py`` does, with no model.

Before each step it adds the requests that arrive (after ``check_request``, as the engine validates them)
and aborts those due (``finish``); then it calls ``schedule()`` and hands the batch to the engine's own step
bookkeeping (:mod:`minivllm.core.bookkeeping`), which applies the tokens a step later with
``async_scheduling``. The allocator is the built-in ``prefix_cache``, watched (:class:`WatchedAllocator`).
The contracts that read what it sees are in :mod:`minivllm.testing.scheduler`.
"""

from __future__ import annotations

from dataclasses import dataclass

from minivllm.core.bookkeeping import StepBookkeeping
from minivllm.core.interfaces import KVAllocator, ScheduledBatch, SchedulerConfig
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.testing.kit import registry


@dataclass(frozen=True)
class Request:
    prompt_len: int
    max_tokens: int
    arrival: int = 0  # added before this step
    abort: int | None = None  # aborted before this step, if still unfinished
    group: int = 0  # requests of one group share their first tokens ...
    prefix: int = 0  # ... this many of them

    def tokens(self, index: int) -> list[int]:
        shared = [1 + (self.group * 131 + i * 7) % 97 for i in range(min(self.prefix, self.prompt_len))]
        return shared + [100 + (index * 53 + i * 11) % 397 for i in range(self.prompt_len - len(shared))]


@dataclass(frozen=True)
class Scenario:
    requests: tuple[Request, ...]
    num_blocks: int
    max_num_batched_tokens: int
    max_num_seqs: int
    block_size: int = 16
    max_model_len: int = 256
    async_scheduling: bool = False  # each step is planned before the previous step's tokens are known

    def describe(self, scheduler: str, options: dict) -> str:
        opts = f", scheduler_options={options}" if options else ""
        lines = [
            f"EngineConfig(scheduler={scheduler!r}{opts}, kvcache_block_size={self.block_size}, "
            f"max_num_batched_tokens={self.max_num_batched_tokens}, max_num_seqs={self.max_num_seqs}, "
            f"async_scheduling={self.async_scheduling}), a prefix_cache allocator of {self.num_blocks} blocks, "
            f"max_model_len={self.max_model_len}; requests:"
        ]
        for i, r in enumerate(self.requests):
            mates = any(j != i and o.prefix and o.group == r.group for j, o in enumerate(self.requests))
            shared = f" (its first {min(r.prefix, r.prompt_len)} are prefix {r.group}'s)" if r.prefix and mates else ""
            abort = f", aborted before step {r.abort}" if r.abort is not None else ""
            lines.append(
                f"  {i}: a {r.prompt_len}-token prompt{shared}, max_tokens={r.max_tokens}, added before step "
                f"{r.arrival}{abort}"
            )
        return "\n".join(lines)


class Violation(Exception):
    def __init__(self, check: str, step: int, message: str):
        super().__init__(f"at step {step}: {message}")
        self.check = check


class WatchedAllocator(KVAllocator):
    """The real allocator, recording what ``match_prefix`` returned for each sequence."""

    def __init__(self, inner: KVAllocator):
        super().__init__(inner.num_blocks, inner.block_size, inner.enable_prefix_caching)
        self.inner = inner
        self.matched: dict[int, int] = {}  # seq_id -> tokens matched, since the kit last cleared it

    @property
    def num_free_blocks(self) -> int:
        return self.inner.num_free_blocks

    def match_prefix(self, seq: Sequence) -> int:
        self.matched[seq.seq_id] = self.inner.match_prefix(seq)
        return self.matched[seq.seq_id]

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.inner.allocate(seq, num_tokens)

    def free(self, seq: Sequence) -> None:
        self.inner.free(seq)


# what the simulation checks; "batch" (a batch the engine can run) always
LIMITS, BLOCKS, PROGRESS, PREFIX = "limits", "blocks", "progress", "prefix"


class Engine:
    """The engine's side of the scheduler contract (engine.py's step, model aside), checking ``checks``."""

    def __init__(self, name: str, options: dict, scenario: Scenario, checks: set[str]):
        config = SchedulerConfig(
            scenario.max_num_seqs, scenario.max_num_batched_tokens, scenario.max_model_len, options
        )
        inner = registry("kv_allocator").get("prefix_cache")(scenario.num_blocks, scenario.block_size, True)
        self.allocator = WatchedAllocator(inner)
        self.scheduler = registry("scheduler").get(name)(config, self.allocator)
        self.bookkeeping = StepBookkeeping(self.scheduler, scenario.max_model_len)  # the engine's own
        self.scenario, self.checks = scenario, checks
        self.seqs: dict[int, Sequence] = {}  # request index -> its sequence, once accepted
        self.left: set[int] = set()  # requests whose last token is in flight: finished early, as the engine does
        self.in_flight: list[Sequence] | None = None  # async scheduling: the step whose tokens come next
        self.step = 0

    def fail(self, check: str, message: str) -> None:
        if check in self.checks or check == "batch":
            raise Violation(check, self.step, message)

    def run(self) -> None:
        s = self.scenario
        limit = 20 * sum(r.prompt_len + r.max_tokens for r in s.requests) + 50
        while True:
            self._arrive_and_abort()
            unfinished = [i for i, seq in self.seqs.items() if not seq.is_finished and i not in self.left]
            if not unfinished and self.in_flight is None and all(r.arrival < self.step for r in s.requests):
                break
            if unfinished and self.step > limit:
                self.fail(PROGRESS, f"requests {unfinished} are unfinished after {limit} steps")
                return  # stuck, but that is another contract's business
            submitted = self._schedule_and_submit(unfinished) if unfinished else None
            if s.async_scheduling:
                done, self.in_flight = self.in_flight, submitted
            else:
                done = submitted
            if done is not None:
                self._collect(done)
            self._account()
            self.step += 1
        if self.allocator.num_free_blocks != s.num_blocks:
            self.fail(
                BLOCKS,
                f"every request is done, but only {self.allocator.num_free_blocks} of {s.num_blocks} "
                "KV blocks are free: blocks leaked",
            )

    def _arrive_and_abort(self) -> None:
        for i, r in enumerate(self.scenario.requests):
            if r.arrival == self.step:
                seq = Sequence(r.tokens(i), SamplingParams(max_tokens=r.max_tokens, ignore_eos=True))
                try:
                    max_total = min(r.prompt_len + r.max_tokens, self.scenario.max_model_len)
                    self.scheduler.check_request(r.prompt_len, max_total)
                except ValueError:
                    continue  # refused up front, as documented: not this contract's business
                self.scheduler.add(seq)
                self.seqs[i] = seq
            if r.abort == self.step and i in self.seqs and not self.seqs[i].is_finished:
                self._finish(i, "aborted")

    def _finish(self, i: int, why: str) -> None:
        seq = self.seqs[i]
        self.bookkeeping.finish(seq, why)
        if seq.block_table:
            self.fail(BLOCKS, f"request {i} was {why}, and finish() left it holding KV blocks {seq.block_table}")

    def _account(self) -> None:
        """The free blocks and the blocks unfinished sequences hold add up to the whole cache."""
        held = {b for seq in self.seqs.values() if not seq.is_finished for b in seq.block_table}
        free = self.allocator.num_free_blocks
        if free + len(held) != self.scenario.num_blocks:
            self.fail(
                BLOCKS,
                f"{free} KV blocks are free and unfinished requests hold {len(held)}, but the cache has "
                f"{self.scenario.num_blocks}: {self.scenario.num_blocks - free - len(held)} leaked",
            )

    def _schedule_and_submit(self, unfinished: list[int]) -> list[Sequence] | None:
        s, index = self.scenario, {seq.seq_id: i for i, seq in self.seqs.items()}
        fresh = {i for i in unfinished if self.seqs[i].num_computed_tokens == 0}
        self.allocator.matched.clear()
        batch: ScheduledBatch = self.scheduler.schedule()
        if not batch:
            self.fail(PROGRESS, f"schedule() returned an empty batch while requests {unfinished} are unfinished")
            return None
        self._check_batch(batch, index)
        if batch.num_tokens > s.max_num_batched_tokens:
            self.fail(
                LIMITS,
                f"the batch has {batch.num_tokens} new tokens, over max_num_batched_tokens="
                f"{s.max_num_batched_tokens} (requests {[index[q.seq_id] for q in batch.seqs]}, "
                f"tokens {batch.num_new_tokens})",
            )
        if len(batch) > s.max_num_seqs:
            self.fail(LIMITS, f"the batch has {len(batch)} sequences, over max_num_seqs={s.max_num_seqs}")
        for seq in batch.seqs:
            i = index[seq.seq_id]
            if i in fresh and seq.seq_id not in self.allocator.matched:
                self.fail(
                    PREFIX,
                    f"request {i} was scheduled without asking the allocator for its prefix-cache hits (match_prefix)",
                )
            elif i in fresh and seq.num_computed_tokens != self.allocator.matched[seq.seq_id]:
                self.fail(
                    PREFIX,
                    f"request {i} starts at token {seq.num_computed_tokens}, but the prefix cache "
                    f"held its first {self.allocator.matched[seq.seq_id]}: hits must count as computed",
                )
        for seq in batch.preempted:
            if seq in batch.seqs:
                continue  # preempted, then admitted again from the start within the same step
            if seq.block_table or seq.num_computed_tokens or seq.is_finished:
                self.fail(
                    BLOCKS,
                    f"request {index[seq.seq_id]} was preempted but holds blocks {seq.block_table} and "
                    f"{seq.num_computed_tokens} computed tokens (it must give both up, to be recomputed)",
                )
        sampling = self.bookkeeping.submitted(batch)
        for seq in filter(self.bookkeeping.last_is_pending, sampling):
            self.left.add(index[seq.seq_id])  # its last token is in flight: it left the scheduler
            if seq.block_table:
                self.fail(
                    BLOCKS,
                    f"request {index[seq.seq_id]} ended, and finish() left it holding KV blocks {seq.block_table}",
                )
        return sampling

    def _collect(self, sampled: list[Sequence]) -> None:
        """The step's tokens arrive: append them and finish the sequences they end."""
        index = {seq.seq_id: i for i, seq in self.seqs.items()}
        for seq in sampled:
            token = 1 + (self.step * 7 + index[seq.seq_id]) % 50
            if self.bookkeeping.accept(seq, token) and self.bookkeeping.ends_by_length(seq):
                self._finish(index[seq.seq_id], "finished")

    def _check_batch(self, batch: ScheduledBatch, index: dict[int, int]) -> None:
        """What the engine needs to run a batch at all."""
        if len(batch.num_new_tokens) != len(batch.seqs) or len({id(q) for q in batch.seqs}) != len(batch.seqs):
            self.fail("batch", "the batch lists a sequence twice, or not one token count per sequence")
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            i = index.get(seq.seq_id)
            if i is None or seq.is_finished or i in self.left:
                self.fail("batch", f"the batch holds a sequence that is not running (request {i}, {seq})")
            if not 1 <= n <= len(seq) - seq.num_computed_tokens:
                self.fail(
                    "batch",
                    f"request {i} is given {n} new tokens, but {len(seq) - seq.num_computed_tokens} "
                    "are left to compute",
                )
            if len(seq.block_table) < self.allocator.blocks_for(seq.num_computed_tokens + n):
                self.fail(
                    "batch",
                    f"request {i} computes up to token {seq.num_computed_tokens + n} but holds only "
                    f"{len(seq.block_table)} blocks of {self.scenario.block_size}",
                )
