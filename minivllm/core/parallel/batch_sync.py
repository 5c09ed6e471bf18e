"""Ship each step's batch from rank 0 to the other ranks as a delta.

The other ranks mirror every running sequence (its tokens and block table), so a step sends only what
changed since that sequence last ran: a new sequence's prompt once, then the tokens sampled since (one
per decode step; a token still pending on rank 0 is sent once it is known, and the mirror reads it on the
device meanwhile, as rank 0 does), the block-table entries added since, and the ids of sequences that ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minivllm.core.interfaces import ScheduledBatch
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence

# One scheduled sequence, as a plain tuple (it pickles several times faster than a dataclass):
# (seq_id, num_computed_tokens, num_new_tokens, num_pending_tokens,
#  new_token_ids: the known tokens the mirror lacks (the whole prompt the first time),
#  table_keep: how many leading block-table entries the mirror keeps, new_blocks: the entries after those,
#  first: (num_prompt_tokens, params) the first time the sequence runs, else None)
SeqDelta = tuple[int, int, int, int, list[int], int, list[int], tuple[int, SamplingParams] | None]


@dataclass
class BatchDelta:
    seqs: list[SeqDelta]
    ended: list[int] = field(default_factory=list)  # ids of sequences the mirror drops


@dataclass
class _Sent:
    seq: Sequence
    num_tokens: int
    block_table: list[int]


class BatchEncoder:
    """Rank 0: remembers what the mirrors hold and encodes each batch against it."""

    def __init__(self):
        self._sent: dict[int, _Sent] = {}

    def encode(self, batch: ScheduledBatch) -> BatchDelta:
        ended = [sid for sid, sent in self._sent.items() if sent.seq.is_finished]
        for sid in ended:
            del self._sent[sid]
        deltas = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            sent = self._sent.get(seq.seq_id)
            first = None
            if sent is None:
                sent = self._sent[seq.seq_id] = _Sent(seq, 0, [])
                first = (seq.num_prompt_tokens, seq.params)
            new_tokens = seq.token_ids[sent.num_tokens :]  # tokens only ever get appended
            keep = len(sent.block_table)
            if seq.block_table[:keep] != sent.block_table:  # freed and reallocated (preemption)
                keep = 0
            deltas.append(
                (
                    seq.seq_id,
                    seq.num_computed_tokens,
                    n,
                    seq.num_pending_tokens,
                    new_tokens,
                    keep,
                    seq.block_table[keep:],
                    first,
                )
            )
            sent.num_tokens = len(seq.token_ids)
            sent.block_table = list(seq.block_table)
        return BatchDelta(deltas, ended)


class BatchMirror:
    """Ranks 1..N-1: rebuild rank 0's batch from deltas, on mirrored sequences."""

    def __init__(self):
        self._seqs: dict[int, Sequence] = {}

    def apply(self, delta: BatchDelta) -> ScheduledBatch:
        for sid in delta.ended:
            del self._seqs[sid]
        batch = ScheduledBatch()
        for seq_id, num_computed, num_new, num_pending, new_tokens, table_keep, new_blocks, first in delta.seqs:
            if first is not None:
                num_prompt_tokens, params = first
                seq = self._seqs[seq_id] = Sequence(new_tokens, params)
                seq.seq_id = seq_id  # rank 0's: a step's TokenMask (structured output) names its rows by it
                seq.num_prompt_tokens = num_prompt_tokens
            else:
                seq = self._seqs[seq_id]
                seq.token_ids.extend(new_tokens)
            del seq.block_table[table_keep:]
            seq.block_table.extend(new_blocks)
            seq.num_computed_tokens = num_computed
            seq.num_pending_tokens = num_pending
            batch.add(seq, num_new)
        return batch
