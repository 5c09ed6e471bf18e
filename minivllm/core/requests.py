"""Turning a request into sequences: the checks a request must pass before anything is queued, and the
sequences it makes. One home for both, used by the engine (``LLMEngine.make_sequences``) and by a server's
API process (``AsyncLLM``), which validates requests there while the engine itself runs in another process.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as SequenceABC

from minivllm.core.detokenizer import IncrementalDetokenizer
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.core.structured_output import StructuredOutputs


class RequestFactory:
    """What a request is checked against: the vocabulary, ``max_model_len``, the tokenizer (None: the
    checkpoint has none), the EOS ids, the scheduler's own check (``Scheduler.check_request``) and the
    grammars (:class:`StructuredOutputs`: a grammar that does not compile is refused here, and compiled
    ones are cached; the engine's matchers come from the same object). :meth:`close` at the end."""

    def __init__(
        self,
        vocab_size: int,
        max_model_len: int,
        tokenizer,
        eos_token_ids: set[int],
        check_request: Callable[[int, int], None],
    ):
        self.vocab_size, self.max_model_len, self.tokenizer = vocab_size, max_model_len, tokenizer
        self.eos_token_ids, self.check_request = eos_token_ids, check_request  # the engine's set, not a copy
        self.grammars = StructuredOutputs(tokenizer, vocab_size, eos_token_ids)

    def close(self) -> None:
        self.grammars.close()

    def encode(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids: a string tokenized, a sequence of token ids as a list. Anything else is a
        ValueError, bytes and bools included (Python would read them as token ids)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this checkpoint has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        if not is_token_ids(prompt):
            got = type(prompt).__name__
            if isinstance(prompt, SequenceABC) and not isinstance(prompt, (bytes, bytearray)):
                got = f"a {got} holding {type(next(t for t in prompt if not is_token_id(t))).__name__}"
            raise ValueError(f"a prompt must be a string or a list of token ids, got {got}")
        return list(prompt)

    def make_sequence(self, token_ids: list[int], params: SamplingParams, detokenize: bool = False) -> Sequence:
        """Validate a request; raises ValueError naming the problem. Nothing is queued. With
        ``detokenize`` (implied by stop strings) the sequence keeps its text as tokens arrive, in
        ``seq.detokenizer.text``."""
        if not token_ids:
            raise ValueError("the prompt is empty")
        bad = next((t for t in token_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt of {len(token_ids)} tokens is too long: max_model_len={self.max_model_len} "
                "leaves no room to generate"
            )
        self.check_request(len(token_ids), min(len(token_ids) + params.max_tokens, self.max_model_len))
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this checkpoint has none")
        bad = next((t for t in params.stop_token_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"stop token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        if params.structured_outputs is not None:
            if self.tokenizer is None:
                raise ValueError("structured output needs a tokenizer, and this checkpoint has none")
            self.grammars.check(params.structured_outputs)  # compiled once per grammar (cached)
        if params.top_k >= self.vocab_size:  # keeps every token: the same as no top-k, in every sampler
            params = params.model_copy(update={"top_k": -1})
        seq = Sequence(token_ids, params)
        if not params.ignore_eos:
            seq.stop_token_ids |= self.eos_token_ids
        if (detokenize or params.stop) and self.tokenizer is not None:
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer)
        return seq

    def make_sequences(self, token_ids: list[int], params: SamplingParams, detokenize: bool = False) -> list[Sequence]:
        """The ``params.n`` sequences of one request. They hold the same prompt, so the prefix cache
        shares its full KV blocks. Seeded requests give completion ``i`` the seed ``seed + i`` (as vLLM)."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        if params.n == 1:
            return [self.make_sequence(token_ids, params, detokenize)]
        return [
            self.make_sequence(
                token_ids,
                params.model_copy(update={"n": 1, "seed": None if params.seed is None else _wrap64(params.seed + i)}),
                detokenize,
            )
            for i in range(params.n)
        ]


def _wrap64(seed: int) -> int:
    """A seed + completion index kept a signed 64-bit integer (2**63 - 1 + 1 wraps to -2**63)."""
    return (seed + 2**63) % 2**64 - 2**63


def is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_token_ids(prompt) -> bool:
    """A prompt of token ids: a sequence of ints (not bools), but not bytes (a sequence of ints to Python)."""
    return (
        isinstance(prompt, SequenceABC)
        and not isinstance(prompt, (str, bytes, bytearray))
        and all(is_token_id(t) for t in prompt)
    )
