"""Schedulers: decide, every step, which sequences run and how many new tokens each computes.

``minivllm check-plugin scheduler NAME`` checks an implementation against these docstrings
(:mod:`minivllm.testing.scheduler`), driving it as the engine does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from minivllm.core.interfaces.kv_allocator import KVAllocator
from minivllm.core.interfaces.options import PluginOptions
from minivllm.core.sequence import Sequence, SequenceQueue, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    """What a scheduler is given, resolved: the engine builds it from the ``EngineConfig``
    (:meth:`EngineConfig.scheduler_config`) once the model's context length is known."""

    max_num_seqs: int  # sequences in one step, at most
    max_num_batched_tokens: int  # new tokens in one step, at most
    max_model_len: int  # the effective context length: the config's, capped by the model's positions
    scheduler_options: dict[str, Any] = field(default_factory=dict)  # the policy's own settings, unvalidated


@dataclass
class ScheduledBatch:
    """One step's work: ``seqs[i]`` computes ``num_new_tokens[i]`` tokens starting at its
    ``num_computed_tokens`` (a whole prompt, a chunk of one, or one decode token). A sequence samples a
    token when those tokens reach the end of what it holds (:meth:`samples`: the one place that rule lives)."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)

    @staticmethod
    def samples(seq: Sequence, num_new_tokens: int) -> bool:
        """Whether ``seq`` samples a token in a step that computes ``num_new_tokens`` of it (read before
        the step advances ``num_computed_tokens``): a prefill chunk short of the end samples nothing."""
        return seq.num_computed_tokens + num_new_tokens == len(seq)

    def sampling_seqs(self) -> list[Sequence]:
        """The sequences that sample in this step, in batch order (the rows of the step's logits)."""
        return [seq for seq, n in zip(self.seqs, self.num_new_tokens) if self.samples(seq, n)]

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler(ABC):
    """Owns the waiting and running queues and the KV allocator. The engine calls :meth:`add` for new
    requests, :meth:`schedule` at the start of each step and :meth:`finish` for sequences that end.

    The engine constructs a scheduler as ``cls(config, allocator)``: a :class:`SchedulerConfig` and the
    engine's :class:`KVAllocator`. A third-party scheduler that overrides ``__init__`` takes those two
    arguments and calls ``super().__init__(config, allocator)``, which sets ``self.config``,
    ``self.options`` (``config.scheduler_options`` validated by :attr:`Options`), ``self.allocator``,
    ``self.max_model_len`` and the queues."""

    #: the policy's own settings, given as the config's ``scheduler_options`` (validated there, naming the
    #: field) and read as ``self.options``; a policy with settings subclasses it
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, config: SchedulerConfig, allocator: KVAllocator):
        self.config = config
        self.options = self.Options.model_validate(config.scheduler_options)
        self.allocator = allocator
        self.max_model_len = config.max_model_len
        self.waiting = SequenceQueue()
        self.running = SequenceQueue()
        self.num_preemptions = 0

    def check_request(self, num_prompt_tokens: int, max_total_tokens: int) -> None:
        """Called before a request is added: raise ValueError if it could never be scheduled.
        ``max_total_tokens`` is the longest the sequence may grow (prompt plus generated tokens)."""
        needed = self.allocator.blocks_for(max_total_tokens)
        if needed > self.allocator.num_blocks:
            raise ValueError(
                f"the request needs up to {max_total_tokens} tokens ({needed} KV blocks of "
                f"{self.allocator.block_size}) but the KV cache has only {self.allocator.num_blocks} blocks; "
                "raise num_kvcache_blocks or gpu_memory_utilization, or lower max_tokens"
            )

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @abstractmethod
    def schedule(self) -> ScheduledBatch:
        """Pick this step's sequences and token counts, allocating their KV blocks (preempting if they
        run out): at most ``max_num_batched_tokens`` new tokens and ``max_num_seqs`` sequences, a fresh
        sequence starting after its prefix-cache hits. Returns an empty batch only when nothing is
        unfinished."""

    def match_head(self) -> Sequence:
        """The first waiting sequence, with its prefix-cache hits attached and counted as computed."""
        seq = self.waiting[0]
        seq.num_computed_tokens = self.allocator.match_prefix(seq)
        return seq

    def admit_head(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Allocate blocks for ``num_new_tokens`` of the sequence :meth:`match_head` returned and move it to
        the running queue. If blocks are short, undo the match and return False."""
        if not self.allocator.allocate(seq, seq.num_computed_tokens + num_new_tokens):
            self.unmatch(seq)
            return False
        self.waiting.popleft()
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return True

    def unmatch(self, seq: Sequence) -> None:
        """Release the prefix hits of a sequence that stays waiting."""
        self.allocator.free(seq)
        seq.num_computed_tokens = 0

    def reserve(self, seq: Sequence, num_new_tokens: int, batch: ScheduledBatch) -> bool:
        """Allocate blocks for ``num_new_tokens`` more tokens of a running sequence, preempting the newest
        running sequences not yet in ``batch`` while blocks are short. False if ``seq`` itself went."""
        while not self.allocator.allocate(seq, seq.num_computed_tokens + num_new_tokens):
            victim = next(s for s in reversed(self.running) if s not in batch.seqs)
            self.preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence that ends (or will end with the token a step in flight samples for it, see
        engine.py) from the queues and free its blocks. O(1); called at most twice per sequence."""
        if not self.running.discard(seq):
            self.waiting.discard(seq)
        self.allocator.free(seq)

    def preempt(self, seq: Sequence) -> None:
        """Recompute-preemption: drop the sequence's KV and put it at the front of the waiting queue."""
        self.running.remove(seq)
        self.allocator.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
