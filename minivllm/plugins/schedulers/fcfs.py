"""Two-phase first-come-first-served policy: each step is a prefill batch or a decode batch.

Prefill takes waiting sequences in order while the token budget (``max_num_batched_tokens``), the
sequence limit (``max_num_seqs``) and the free blocks allow; prefix-cache hits are not recomputed.
Otherwise every running sequence decodes one token. When blocks run out during decode, the newest
running sequence is preempted (its KV dropped, to be recomputed) and goes back to the front of the
queue, so it resumes first.
"""

from __future__ import annotations

from minivllm.core.interfaces import ScheduledBatch, Scheduler
from minivllm.core.sequence import SequenceStatus


class FCFSScheduler(Scheduler):
    def check_request(self, num_prompt_tokens: int, max_total_tokens: int) -> None:
        super().check_request(num_prompt_tokens, max_total_tokens)
        if num_prompt_tokens > self.config.max_num_batched_tokens:
            raise ValueError(
                f"prompt of {num_prompt_tokens} tokens exceeds max_num_batched_tokens="
                f"{self.config.max_num_batched_tokens}: the fcfs scheduler prefills a prompt in one step; "
                "raise max_num_batched_tokens or use scheduler='chunked'"
            )

    def schedule(self) -> ScheduledBatch:
        batch = self._schedule_prefill()
        return batch if batch else self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.match_head()
            num_new = len(seq) - seq.num_computed_tokens
            # a sequence resumed after preemption may exceed the budget; it then runs alone
            if batch and batch.num_tokens + num_new > self.config.max_num_batched_tokens:
                self.unmatch(seq)
                break
            if not self.admit_head(seq, num_new):
                break
            batch.add(seq, num_new)
        return batch

    def _schedule_decode(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        for seq in list(self.running):
            # skip sequences preempted earlier in this loop
            if seq.status is SequenceStatus.RUNNING and self.reserve(seq, 1, batch):
                batch.add(seq, 1)
        return batch
