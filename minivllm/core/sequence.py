"""A request's state as it moves through the engine, and the queues schedulers keep sequences in."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from enum import Enum, auto

from minivllm.core.sampling_params import SamplingParams

_ids = itertools.count()


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    def __init__(self, token_ids: list[int], params: SamplingParams):
        self.seq_id = next(_ids)
        self.token_ids = list(token_ids)  # the prompt and every generated token the host knows
        self.num_prompt_tokens = len(token_ids)
        # tokens sampled on the device whose value the host does not know yet: with async scheduling the
        # engine plans the next step before the last one's token comes back (see engine.py); 0 otherwise
        self.num_pending_tokens = 0
        self.params = params
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose K/V is in the cache (or being written by a step in flight)
        self.block_table: list[int] = []
        self.finish_reason: str | None = None  # "stop", "length", "abort", or "error" (see ``error``)
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended it
        self.error: str | None = None  # why a step failed for this sequence (finish_reason "error")
        # tokens that end the sequence (EOS included unless ignored); banned before min_tokens
        self.stop_token_ids: frozenset[int] = frozenset(params.stop_token_ids)
        self.detokenizer = None  # an IncrementalDetokenizer when the engine keeps the text as tokens arrive
        # with params.structured_outputs: the grammar's matcher (a Future of it while it is built), see
        # structured_output.py; it has seen every token the host knows
        self.grammar = None
        # per output token when params.logprobs is set: (sampled token's logprob, [(token id, logprob)] top-k)
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] = []

    def __len__(self) -> int:
        """Tokens the sequence holds, pending ones included: what schedulers and allocators plan with."""
        return len(self.token_ids) + self.num_pending_tokens

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, tokens={len(self)}, computed={self.num_computed_tokens}, {self.status.name})"
        )

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens the host knows (what the caller sees)."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_generated_tokens(self) -> int:
        """Generated tokens, pending ones included: the step count that seeds and ``min_tokens`` use."""
        return len(self) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)


class SequenceQueue:
    """An ordered set of sequences with O(1) append at either end, ``popleft`` and ``remove``: the
    scheduler's waiting and running queues, so that finishing or aborting one sequence among many costs
    the same as among few. Iterates oldest first (``reversed`` newest first)."""

    def __init__(self, seqs=()):
        self._seqs: OrderedDict[int, Sequence] = OrderedDict((s.seq_id, s) for s in seqs)

    def append(self, seq: Sequence) -> None:
        self._seqs[seq.seq_id] = seq

    def appendleft(self, seq: Sequence) -> None:
        self._seqs[seq.seq_id] = seq
        self._seqs.move_to_end(seq.seq_id, last=False)

    def popleft(self) -> Sequence:
        return self._seqs.popitem(last=False)[1]

    def remove(self, seq: Sequence) -> None:
        """Remove ``seq``; raises KeyError if it is not queued."""
        del self._seqs[seq.seq_id]

    def discard(self, seq: Sequence) -> bool:
        """Remove ``seq`` if queued; returns whether it was."""
        return self._seqs.pop(seq.seq_id, None) is not None

    def __getitem__(self, index: int) -> Sequence:
        if index == 0 and self._seqs:
            return next(iter(self._seqs.values()))
        if index == -1 and self._seqs:
            return next(reversed(self._seqs.values()))
        return list(self._seqs.values())[index]

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, Sequence) and self._seqs.get(seq.seq_id) is seq

    def __iter__(self) -> Iterator[Sequence]:
        return iter(list(self._seqs.values()))  # a snapshot: callers may add or remove while iterating

    def __reversed__(self) -> Iterator[Sequence]:
        return iter(list(reversed(self._seqs.values())))

    def __len__(self) -> int:
        return len(self._seqs)

    def __bool__(self) -> bool:
        return bool(self._seqs)

    def __repr__(self) -> str:
        return f"SequenceQueue({list(self._seqs.values())})"
