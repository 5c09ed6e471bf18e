"""Incremental detokenisation: the text of a growing list of token ids, one delta at a time.

Decoding one token alone loses context (SentencePiece's leading spaces) and can split a multi-byte
character over several byte tokens. So each step decodes a short window that starts at the tokens
already turned into text, and keeps only what the new tokens add; while the text ends in an
incomplete character (U+FFFD), the new tokens wait for the next ones. The deltas add up to
``tokenizer.decode(all ids)``.
"""

from __future__ import annotations

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
