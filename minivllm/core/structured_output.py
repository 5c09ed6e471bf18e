"""Structured output: constrain a sequence's tokens to a JSON schema, a regex, a choice or a grammar.

The grammar engine is llguidance (benchmarks/RESULTS.md, "Structured output", says why). A request's
:class:`~minivllm.core.sampling_params.StructuredOutputsParams` becomes an llguidance grammar, validated
against the tokenizer when the request is (:meth:`StructuredOutputs.check`, cached by the grammar, so a
thousand requests with one schema compile it once). Each sequence then gets its own matcher, built on a
thread pool (:meth:`StructuredOutputs.start`): the engine keeps the sequence out of the scheduler until its
matcher is ready, so compiling never stalls a step.

Every step the engine asks for the allowed tokens of the constrained rows (:meth:`StructuredOutputs.bitmask`:
one bit per token, filled on the host by llguidance's threads), the runner applies them to the logits in one
pass before the sampler runs (``sampling.apply_token_mask``), and each token that arrives advances its
sequence's matcher (:meth:`StructuredOutputs.accept`). EOS is a token like any other: allowed only where the
grammar may end. A grammar that completes ends the sequence (``finish_reason="stop"``).

A mask needs the matcher to have seen every earlier token. With async scheduling a sequence's previous token
is still on the device when the next step is planned, so the mask is made late: the engine hands the executor
a function (:data:`StepMask`) that the runner calls once the step's forward pass is queued; it collects the
step in flight (the tokens the matchers need), then fills the mask. The host's grammar work overlaps the
device's forward pass, and only sampling waits for it (engine.py). Under tensor parallelism rank 0 sends the
mask to the other ranks when it is made.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from minivllm.core.sampling_params import StructuredOutputsParams
from minivllm.core.sequence import Sequence

CACHE_SIZE = 1024  # compiled grammars kept (least recently used dropped)


def to_grammar(spec: StructuredOutputsParams) -> str:
    """The llguidance grammar (its JSON form) of a constraint; not yet validated."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark

    kind = spec.kind
    if kind == "json":
        return LLMatcher.grammar_from_json_schema(spec.json)
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"})
    if kind == "regex":
        return LLMatcher.grammar_from_regex(spec.regex)
    if kind == "choice":  # a Lark rule of string literals: no regex escaping to get wrong
        return LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in spec.choice)
        )
    try:  # Lark as it is; GBNF/EBNF (llama.cpp's, xgrammar's) translated
        return LLMatcher.grammar_from_lark(any_to_lark(spec.grammar))
    except GbnfToLarkError as e:
        raise ValueError(str(e)) from None


def cache_key(spec: StructuredOutputsParams) -> str:
    return json.dumps([spec.kind, getattr(spec, spec.kind)], sort_keys=True)


@dataclass
class TokenMask:
    """The allowed tokens of a step's constrained rows, as the engine hands them to the executor."""

    rows: dict[int, int]  # seq_id -> its row in ``bits``
    bits: np.ndarray  # [R, ceil(vocab_size / 32)] int32: bit ``t % 32`` of word ``t // 32`` allows token t


# what the engine hands the executor with a step: the mask, or a function that makes it, which the runner calls
# once the step's forward pass is queued (the host's work for it then overlaps the device's; see LLMEngine._submit)
StepMask = TokenMask | Callable[[], TokenMask | None] | None


class StructuredOutputs:
    """The engine's grammar side, for one tokenizer and the model's vocabulary. :meth:`check` may be called
    from any thread; the rest only from the engine's."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int], threads: int = 2):
        self.vocab_size, self.threads = vocab_size, threads
        self._hf_tokenizer, self._eos_token_ids = tokenizer, eos_token_ids
        self._llg = None  # (llguidance's tokenizer, its executor): built on first use, it reads the whole vocabulary
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="minivllm-grammar")
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        """llguidance's view of the tokenizer, built by the first call (from any thread)."""
        return self._built()[0]

    def _built(self):
        with self._lock:
            if self._llg is None:
                import llguidance
                import llguidance.hf

                # the grammar allows EOS where it may end: the checkpoint's EOS ids that are special tokens (an
                # id that is also text, as in a config that names a plain token, stays text to the grammar)
                tokenizer = self._hf_tokenizer
                special = set(tokenizer.all_special_ids)
                eos = sorted(t for t in self._eos_token_ids if t in special) or tokenizer.eos_token_id
                self._llg = (
                    llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size, eos_token=eos),
                    llguidance.LLExecutor(self.threads),
                )  # fills the rows of a step's mask side by side
            return self._llg

    def check(self, spec: StructuredOutputsParams) -> str:
        """The validated grammar of ``spec`` (cached); raises ValueError saying what is wrong with it."""
        key = cache_key(spec)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        from llguidance import LLMatcher

        try:
            grammar = to_grammar(spec)
        except ValueError as e:
            raise ValueError(f"invalid {spec.kind} for structured output: {e}") from None
        error = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(f"invalid {spec.kind} for structured output: {error}")
        with self._lock:
            self._cache[key] = grammar
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar

    def start(self, seq: Sequence) -> None:
        """Build the sequence's matcher on the pool; ``seq.grammar`` holds its future until :meth:`ready`."""
        from llguidance import LLMatcher

        spec = seq.params.structured_outputs  # checked (and cached) in the pool too: never on the step's thread
        seq.grammar = self._pool.submit(lambda: LLMatcher(self.tokenizer, self.check(spec), log_level=0))

    @staticmethod
    def ready(seq: Sequence) -> bool:
        """Whether the matcher is built (then ``seq.grammar`` is the matcher). Raises what building raised."""
        if isinstance(seq.grammar, Future):
            if not seq.grammar.done():
                return False
            seq.grammar = seq.grammar.result()
            if seq.grammar.is_error():
                raise ValueError(seq.grammar.get_error())
        return True

    @staticmethod
    def wait(seqs: list[Sequence], timeout: float) -> None:
        """Block until one of the sequences' matchers is built, or ``timeout`` seconds pass."""
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures

        wait_futures([s.grammar for s in seqs if isinstance(s.grammar, Future)], timeout, FIRST_COMPLETED)

    def bitmask(self, seqs: list[Sequence]) -> TokenMask | None:
        """The allowed tokens of the constrained ones among a step's sampling sequences; None if there are none.
        Every matcher must be up to date (no token pending)."""
        constrained = [seq for seq in seqs if seq.grammar is not None]
        if not constrained:
            return None
        import llguidance.numpy as lln

        bits = lln.allocate_token_bitmask(len(constrained), self.vocab_size)
        lln.fill_next_token_bitmask_par(self._built()[1], [(seq.grammar, i) for i, seq in enumerate(constrained)], bits)
        return TokenMask({seq.seq_id: i for i, seq in enumerate(constrained)}, bits)

    @staticmethod
    def accept(seq: Sequence, token: int) -> bool:
        """Advance the sequence's matcher by its new token; returns whether the grammar is complete (it takes
        nothing more). Raises ValueError if the grammar forbids the token (a sampler that ignored the mask)."""
        matcher = seq.grammar
        if not matcher.consume_token(token):
            raise ValueError(f"token {token} breaks the grammar: {matcher.get_error()}")
        return matcher.is_stopped()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
