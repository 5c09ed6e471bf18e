"""Chunked prefill: every step mixes decode tokens and prefill chunks under one token budget.

Each step, every running sequence that is decoding gets its one token first (up to ``max_num_seqs``).
What is left of ``max_num_batched_tokens`` goes to prefill in arrival order: first sequences whose
prompt is partly computed, then waiting ones; a prompt is split where the budget ends, and no
sequence gets more than its option ``long_prefill_token_threshold`` tokens in one step when that is set
(``scheduler_options={"long_prefill_token_threshold": 64}``).
Prefix-cache hits count as computed. When blocks run out, the newest running sequence not yet
scheduled this step is preempted (recompute), as in fcfs. A partly prefilled sequence samples no
token until its last chunk (the runner samples only where the new tokens reach the sequence's end).
"""

from __future__ import annotations

from pydantic import Field

from minivllm.core.interfaces import PluginOptions, ScheduledBatch, Scheduler
from minivllm.core.sequence import Sequence, SequenceStatus


class ChunkedPrefillScheduler(Scheduler):
    class Options(PluginOptions):
        long_prefill_token_threshold: int = Field(
            0, ge=0, description="most prefill tokens one sequence gets per step (0 = no cap)"
        )

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        decoding = [s for s in self.running if len(s) - s.num_computed_tokens == 1]
        for seq in decoding:
            if budget == 0:
                break
            if seq.status is SequenceStatus.RUNNING and self.reserve(seq, 1, batch):
                batch.add(seq, 1)
                budget -= 1
        for seq in [s for s in self.running if len(s) - s.num_computed_tokens > 1]:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted above
                continue
            chunk = self._chunk(seq, budget)
            if self.reserve(seq, chunk, batch):
                batch.add(seq, chunk)
                budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.match_head()
            chunk = self._chunk(seq, budget)
            if not self.admit_head(seq, chunk):
                break
            batch.add(seq, chunk)
            budget -= chunk
        return batch

    def _chunk(self, seq: Sequence, budget: int) -> int:
        chunk = min(len(seq) - seq.num_computed_tokens, budget)
        if self.options.long_prefill_token_threshold:
            chunk = min(chunk, self.options.long_prefill_token_threshold)
        return chunk
