"""What a sequence shows its caller: the text so far (streamed or whole) and the finished completion."""

from __future__ import annotations

from minivllm.core.sequence import Sequence


def output_text(seq: Sequence, tokenizer) -> str:
    """The whole text of the sequence's output so far (cut at a stop string if one ended it)."""
    if seq.detokenizer is not None:
        return seq.detokenizer.text
    return tokenizer.decode(seq.output_token_ids, skip_special_tokens=True) if tokenizer is not None else ""


def releasable_text(seq: Sequence) -> str:
    """The part of a detokenized sequence's text that may be streamed now: until it finishes, the last
    ``len(longest stop string) - 1`` characters are held back, as they may begin a stop string that
    would be cut from the output."""
    text = seq.detokenizer.text
    if seq.is_finished or not seq.params.stop or seq.params.include_stop_str_in_output:
        return text
    return text[: max(0, len(text) - max(len(s) for s in seq.params.stop) + 1)]


def completion(seq: Sequence, tokenizer, index: int = 0) -> dict:
    return {
        "index": index,
        "text": output_text(seq, tokenizer),
        "tokens": seq.output_token_ids,
        "finished": seq.finish_reason in ("stop", "length"),
        "finish_reason": seq.finish_reason,
        "stop_reason": seq.stop_reason,
        "logprobs": list(seq.logprobs) if seq.params.logprobs is not None else None,
    }
