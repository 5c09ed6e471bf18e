"""Incremental detokenisation: the text of a growing list of token ids, one delta at a time.

Decoding one token alone loses context (SentencePiece's leading spaces) and can split a multi-byte
character over several byte tokens. So each step decodes a short window that starts at the tokens
already turned into text, and keeps only what the new tokens add; while the text ends in an
incomplete character (U+FFFD), the new tokens wait for the next ones. The deltas add up to
``tokenizer.decode(all ids)``.

:func:`push_text` adds a sequence's new token to its text and applies the stop-string rule: the one home of
that rule, called by the engine (offline) and by a server's API process (where a server detokenizes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minivllm.core.sequence import Sequence

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.prefix_offset = 0  # the window starts here: tokens already in the text, decoded again for context
        self.read_offset = 0  # tokens before this are in the text
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_ids: list[int], final: bool = False) -> str:
        """Add tokens; returns the text they complete. ``final`` (no more tokens follow) also releases
        a trailing incomplete character, as U+FFFD, the way a whole decode would."""
        self.token_ids.extend(token_ids)
        window = self.token_ids[self.prefix_offset :]
        before = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        after = self._decode(window)
        if not final and (after.endswith(REPLACEMENT) or len(after) <= len(before)):
            return ""  # an incomplete character (or nothing yet): wait for more tokens
        delta = after[len(before) :]
        self.text += delta
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.token_ids)
        return delta


def push_text(seq: Sequence, token: int, final: bool) -> bool:
    """Add ``token`` (just appended to ``seq``) to the sequence's text. ``final``: the token ends the sequence
    anyway (a stop token, the length limit). Otherwise, once ``min_tokens`` are out, look for a stop string
    ending in the new text; if one does, cut the text there (after it with ``include_stop_str_in_output``),
    record it as ``seq.stop_reason`` and return True: the sequence stops."""
    params, detok = seq.params, seq.detokenizer
    delta = detok.push([token], final=final)
    if final or not params.stop or seq.num_output_tokens < params.min_tokens:
        return False
    longest = max(len(s) for s in params.stop)
    start = max(0, len(detok.text) - len(delta) - longest + 1)
    hits = [(i, s) for s in params.stop if (i := detok.text.find(s, start)) != -1]
    if not hits:
        return False
    index, stop = min(hits)
    detok.text = detok.text[: index + len(stop) if params.include_stop_str_in_output else index]
    seq.stop_reason = stop
    return True
