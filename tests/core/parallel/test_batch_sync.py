"""Batch deltas: the other ranks' mirrors rebuild rank 0's batches exactly, from small messages."""

import pickle
import random

from minivllm import SamplingParams
from minivllm.core.interfaces import ScheduledBatch
from minivllm.core.parallel.batch_sync import BatchEncoder, BatchMirror
from minivllm.core.sequence import Sequence, SequenceStatus
from minivllm.core.utils import cdiv


def _ship(encoder, mirror, seqs, num_new):
    """Encode a batch on "rank 0", pickle it as the control channel does, apply it on a "worker"."""
    batch = ScheduledBatch()
    for seq, n in zip(seqs, num_new):
        batch.add(seq, n)
    delta = encoder.encode(batch)
    return delta, mirror.apply(pickle.loads(pickle.dumps(delta)))


def _same(batch, mirrored):
    assert mirrored.num_new_tokens == batch.num_new_tokens
    for seq, copy in zip(batch.seqs, mirrored.seqs):
        assert copy.seq_id == seq.seq_id  # what a step's TokenMask names its rows by
        assert copy.token_ids == seq.token_ids
        assert copy.num_prompt_tokens == seq.num_prompt_tokens
        assert copy.block_table == seq.block_table
        assert copy.num_computed_tokens == seq.num_computed_tokens
        assert copy.num_pending_tokens == seq.num_pending_tokens
        assert len(copy) == len(seq)
        assert copy.params == seq.params


def test_decode_steps_send_only_what_changed():
    encoder, mirror = BatchEncoder(), BatchMirror()
    seqs = [Sequence(list(range(10 + i)), SamplingParams(temperature=0.0)) for i in range(3)]
    for seq in seqs:
        seq.block_table = [seq.seq_id * 10, seq.seq_id * 10 + 1]
    delta, mirrored = _ship(encoder, mirror, seqs, [len(s) for s in seqs])  # prefill: the whole prompt once
    assert [d[4] for d in delta.seqs] == [s.token_ids for s in seqs]
    for seq in seqs:
        seq.num_computed_tokens = len(seq)
        seq.append(7)
    delta, mirrored = _ship(encoder, mirror, seqs, [1, 1, 1])
    _same(ScheduledBatch(seqs, [1, 1, 1]), mirrored)
    # one new token, no block-table entries, no first-time info per sequence
    assert [(d[4], d[5], d[6], d[7]) for d in delta.seqs] == [([7], 2, [], None)] * 3
    seqs[1].block_table.append(99)
    seqs[1].num_computed_tokens += 1
    seqs[1].append(8)
    delta, mirrored = _ship(encoder, mirror, seqs[1:2], [1])
    assert delta.seqs[0][4:7] == ([8], 2, [99])
    _same(ScheduledBatch(seqs[1:2], [1]), mirrored)


def test_random_schedules_with_preemption_and_ends():
    """Random steps of a small scheduler-like loop: prefill chunks, decode, preemption (blocks freed
    and reallocated), tokens that stay pending for a step (async scheduling), finished sequences; after
    every step the mirror equals rank 0."""
    rng = random.Random(0)
    encoder, mirror = BatchEncoder(), BatchMirror()
    live, pending = [], []
    next_block = 0
    for _ in range(300):
        if len(live) < 6 and rng.random() < 0.3:
            live.append(
                Sequence(
                    [rng.randrange(500) for _ in range(rng.randint(1, 40))],
                    SamplingParams(temperature=rng.choice([0.0, 0.7]), seed=rng.randrange(9)),
                )
            )
        if not live:
            continue
        batch = ScheduledBatch()
        for seq in rng.sample(live, rng.randint(1, len(live))):
            if rng.random() < 0.1:  # preempted earlier: recompute from scratch in fresh blocks
                seq.block_table.clear()
                seq.num_computed_tokens = 0
            n = min(len(seq) - seq.num_computed_tokens, rng.randint(1, 16)) or 1
            need = cdiv(seq.num_computed_tokens + n, 16)
            while len(seq.block_table) < need:
                seq.block_table.append(next_block)
                next_block += 1
            batch.add(seq, n)
        delta = encoder.encode(batch)
        _same(batch, mirror.apply(pickle.loads(pickle.dumps(delta))))
        for seq in pending:  # the previous step's tokens arrive
            seq.num_pending_tokens -= 1
            seq.append(rng.randrange(500))
        pending = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):  # the engine's update
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == len(seq) and seq.num_pending_tokens == 0 and rng.random() < 0.5:
                seq.num_pending_tokens += 1
                pending.append(seq)
            elif seq.num_computed_tokens == len(seq):
                seq.append(rng.randrange(500))
                if rng.random() < 0.1:
                    seq.status = SequenceStatus.FINISHED
                    live.remove(seq)
    mirror.apply(encoder.encode(ScheduledBatch()))  # the next step tells the mirror which ones ended
    assert set(mirror._seqs) <= {seq.seq_id for seq in live}
