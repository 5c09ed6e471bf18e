"""Two-phase first-come-first-served policy: each step is a prefill batch or a decode batch.

Prefill takes waiting sequences in order while the token budget (``max_num_batched_tokens``), the
sequence limit (``max_num_seqs``) and the free blocks allow; prefix-cache hits are not recomputed.
Otherwise every running sequence decodes one token. When blocks run out during decode, the newest
running sequence is preempted (its KV dropped, to be recomputed) and goes back to the front of the
queue, so it resumes first. A sequence is computed whole in one step, when it starts and again when it
resumes, so a request whose prompt plus ``max_tokens`` exceeds the budget is refused up front (as vLLM
refuses sequences longer than ``max_num_batched_tokens`` without chunked prefill).
"""

from __future__ import annotations

from minivllm.core.interfaces import ScheduledBatch, Scheduler
from minivllm.core.sequence import SequenceStatus


class FCFSScheduler(Scheduler):
    def check_request(self, num_prompt_tokens: int, max_total_tokens: int) -> None:
        super().check_request(num_prompt_tokens, max_total_tokens)
        if max_total_tokens > self.config.max_num_batched_tokens:
            raise ValueError(
                f"a request of up to {max_total_tokens} tokens (a prompt of {num_prompt_tokens} plus max_tokens) "
                f"exceeds max_num_batched_tokens={self.config.max_num_batched_tokens}: the fcfs scheduler computes a "
                "sequence whole in one step, when it starts and again when it resumes after preemption; raise "
                "max_num_batched_tokens, lower max_tokens or use scheduler='chunked'"
            )

    def schedule(self) -> ScheduledBatch:
        batch = self._schedule_prefill()
        return batch if batch else self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.match_head()
            num_new = len(seq) - seq.num_computed_tokens  # within the budget: check_request saw to it
            if batch.num_tokens + num_new > self.config.max_num_batched_tokens:
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
