"""A step's bookkeeping on the host: what happens to the sequences of a batch once it is submitted, and to
each sampled token once it arrives. One home for it: the engine calls it, and so do the scheduler
conformance kit (:mod:`minivllm.testing.scheduler`) and the tests, so the kit certifies the engine's code.

A submitted step advances each sequence's computed tokens and gives each sequence that samples a *pending*
token (counted in ``len(seq)``, its value still on the device). A sequence whose pending token is its last by
length leaves the scheduler at once (its blocks are not needed any more), though it finishes only when that
token arrives. An arriving token is appended, unless its sequence ended meanwhile (a stop, an abort): then it
is dropped. Stop tokens and stop strings are the engine's business (they need the token's value and text).
"""

from __future__ import annotations

from minivllm.core.interfaces.scheduler import ScheduledBatch, Scheduler
from minivllm.core.sequence import Sequence, SequenceStatus


class StepBookkeeping:
    """The sequences' side of each step, for one scheduler and the effective ``max_model_len``."""

    def __init__(self, scheduler: Scheduler, max_model_len: int):
        self.scheduler = scheduler
        self.max_model_len = max_model_len

    def at_length_limit(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether a sequence of ``num_tokens`` tokens can take no more: ``max_tokens`` generated, or
        ``max_model_len`` reached. The one place the rule "a sequence ends by length" lives."""
        return num_tokens - seq.num_prompt_tokens >= seq.params.max_tokens or num_tokens >= self.max_model_len

    def last_is_pending(self, seq: Sequence) -> bool:
        """Whether the sequence's newest pending token is its last by length."""
        return self.at_length_limit(seq, len(seq))

    def ends_by_length(self, seq: Sequence) -> bool:
        """Whether the tokens the host knows reach the length limit (checked after :meth:`accept`)."""
        return self.at_length_limit(seq, len(seq.token_ids))

    def submitted(self, batch: ScheduledBatch) -> list[Sequence]:
        """Advance the batch's sequences as if its tokens were known (call it right after the batch is
        queued on the device); returns the sequences that sample in it, in batch order. Those whose pending
        token is their last leave the scheduler now. A sequence that ended while the batch was being queued
        (the step before it, collected for a grammar's mask) is left as it is: its token will be dropped."""
        sampling = batch.sampling_seqs()  # read before num_computed_tokens advances
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if not seq.is_finished:
                seq.num_computed_tokens += n
        for seq in sampling:
            if seq.is_finished:
                continue
            seq.num_pending_tokens += 1
            if self.last_is_pending(seq):
                self.scheduler.finish(seq)
        return sampling

    def accept(self, seq: Sequence, token: int) -> bool:
        """A sampled token arrived: append it. Returns False (and drops it) if the sequence ended meanwhile."""
        if seq.is_finished:
            return False
        seq.num_pending_tokens -= 1
        seq.append(token)
        return True

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a sequence now: out of the scheduler, its blocks freed; a token in flight for it is dropped."""
        self.scheduler.finish(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.num_pending_tokens = 0
