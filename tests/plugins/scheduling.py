"""Drive a scheduler without a model, doing what the engine does after each forward pass."""

from minivllm.core.bookkeeping import StepBookkeeping


def run_step(sched, token: int = 1):
    """Schedule one step and run the engine's bookkeeping on it synchronously: advance the computed
    counts, append ``token`` where a sequence samples, and finish sequences that end by length. Returns
    the scheduled batch."""
    batch = sched.schedule()
    book = StepBookkeeping(sched, sched.max_model_len)
    for seq in book.submitted(batch):
        if book.accept(seq, token) and book.ends_by_length(seq):
            book.finish(seq, "length")
    return batch
