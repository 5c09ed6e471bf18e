"""Drive a scheduler without a model, doing what the engine does after each forward pass."""


def run_step(sched, token: int = 1):
    """Schedule one step, advance the computed counts, append ``token`` where a sequence samples, and
    finish sequences that reached ``max_tokens``. Returns the scheduled batch."""
    batch = sched.schedule()
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == len(seq):
            seq.append(token)
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq)
    return batch
