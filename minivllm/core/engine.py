"""The engine: composes the plugins the config names; each step is schedule -> submit -> update.

**Async scheduling** (``async_scheduling``, on by default with CUDA). Without it a step is strictly
schedule -> run on the device -> wait for the sampled tokens -> update, and the GPU idles while the host
does the rest. With it the engine plans step N+1 while the device still runs step N: it advances each
sequence as if step N's token were known already (the token is *pending*: counted in ``len(seq)``, its
value still on the device), submits step N+1 — whose decode inputs the runner takes on the device from
step N's sampled tokens — and only then waits for step N's tokens and applies them (appending, stop
conditions, finishing). A sequence that step N ends (a stop token, a stop string) has already been given
step N+1's work; that token is dropped when it arrives, so nothing of it shows (text, tokens, logprobs,
counts). What the host can know in advance it uses: a sequence whose pending token is its last by
``max_tokens`` or ``max_model_len`` leaves the scheduler (and frees its blocks) as soon as that token is
submitted, so no step is wasted on it. Both modes run the same code; only which step's tokens are
collected after a submit differs (the one just submitted, or the one before).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass

import torch

from minivllm.core import plugins
from minivllm.core.bookkeeping import StepBookkeeping
from minivllm.core.config import EngineConfig
from minivllm.core.cpu import choose_threads
from minivllm.core.detokenizer import IncrementalDetokenizer
from minivllm.core.interfaces import ScheduledBatch
from minivllm.core.parallel.executor import WorkerError, create_executor
from minivllm.core.runner_setup import RunnerSetup
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.core.step import StepFuture

logger = logging.getLogger(__name__)


@dataclass
class _Submitted:
    """A step on the device: the sequences that sample in it, and its future tokens."""

    seqs: list[Sequence]
    future: StepFuture


class LLMEngine:
    def __init__(self, config: EngineConfig):
        plugins.load_plugins()
        self.config = config
        setup = RunnerSetup.resolve(config)
        self.checkpoint, self.max_model_len = setup.checkpoint, setup.max_model_len
        self.vocab_size = setup.spec.vocab_size
        self.tokenizer = self.checkpoint.load_tokenizer(config.tokenizer)
        self.eos_token_ids = self.checkpoint.eos_token_ids(self.tokenizer)
        if config.torch_device.type == "cpu" and (threads := choose_threads()) is not None:
            torch.set_num_threads(threads)
            logger.info("CPU: %d intra-op thread(s), one per core idle now (OMP_NUM_THREADS=N to choose)", threads)
        # one ModelRunner in this process, or with tensor parallelism one per rank
        self.executor = create_executor(setup)
        num_blocks = config.num_kvcache_blocks
        if num_blocks == -1:
            num_blocks = self.executor.num_blocks_from_memory(config.max_num_seqs, self.max_model_len)
        self.executor.allocate_kv_cache(num_blocks)
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB); room for %.1f sequences of max_model_len=%d",
            num_blocks, config.kvcache_block_size, num_blocks * self.executor.block_bytes / 2**30,
            num_blocks * config.kvcache_block_size / self.max_model_len, self.max_model_len,
        )
        self.allocator = plugins.kv_allocators.get(config.kv_allocator)(
            num_blocks, config.kvcache_block_size, config.enable_prefix_caching
        )
        self.scheduler = plugins.schedulers.get(config.scheduler)(
            config.scheduler_config(self.max_model_len), self.allocator)
        self.bookkeeping = StepBookkeeping(self.scheduler, self.max_model_len)
        self.async_scheduling = config.resolved_async_scheduling
        self._in_flight: _Submitted | None = None  # with async scheduling: the step whose tokens come next

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (idempotent)."""
        self.executor.close()

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
        self.scheduler.check_request(len(token_ids), min(len(token_ids) + params.max_tokens, self.max_model_len))
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this checkpoint has none")
        bad = next((t for t in params.stop_token_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"stop token id {bad} is outside the vocabulary [0, {self.vocab_size})")
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
            self.make_sequence(token_ids, params.model_copy(
                update={"n": 1, "seed": None if params.seed is None else _wrap64(params.seed + i)}), detokenize)
            for i in range(params.n)
        ]

    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def has_unfinished(self) -> bool:
        """Whether :meth:`step` has work left: sequences queued, or a step in flight whose tokens are still
        wanted (one whose sequences all ended meanwhile has nothing left to give)."""
        in_flight = self._in_flight
        return self.scheduler.has_unfinished() or (
            in_flight is not None and not all(seq.is_finished for seq in in_flight.seqs))

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence now and free its KV blocks (a token in flight for it is dropped on arrival)."""
        if not seq.is_finished:
            self.bookkeeping.finish(seq, "abort")

    def step(self) -> list[Sequence]:
        """Run one step; returns the sequences that got a new token (finished ones included). With async
        scheduling these are the tokens of the step submitted by the previous call."""
        batch = self.scheduler.schedule()
        if not batch and self.scheduler.has_unfinished():
            raise RuntimeError(
                f"the {self.config.scheduler!r} scheduler returned an empty batch while {len(self.scheduler.running)} "
                f"running and {len(self.scheduler.waiting)} waiting sequences are unfinished: a scheduler bug "
                "(Scheduler.schedule must make progress)"
            )
        try:
            submitted = self._submit(batch) if batch else None
        except WorkerError:
            raise
        except Exception as e:  # a request the validation let through, or a plugin's bug: find who caused it
            if self.config.tensor_parallel_size > 1:
                raise  # the other ranks may have run the step: no way back
            return self._isolate(batch, e)
        if self.async_scheduling:
            done, self._in_flight = self._in_flight, submitted
        else:
            done = submitted
        return self._collect(done) if done is not None else []

    def _submit(self, batch: ScheduledBatch) -> _Submitted:
        """Queue the batch on the device and advance its sequences as if its tokens were known."""
        future = self.executor.submit(batch)
        return _Submitted(self.bookkeeping.submitted(batch), future)

    def _collect(self, submitted: _Submitted) -> list[Sequence]:
        """Wait for a submitted step's tokens and apply them: append, check stop conditions, finish."""
        sampled = submitted.future.result().sampled
        updated = []
        for seq in submitted.seqs:
            token, token_logprobs = sampled[seq.seq_id]
            if not self.bookkeeping.accept(seq, token):  # ended (stop, abort) while this step ran: dropped
                continue
            if token_logprobs is not None:
                seq.logprobs.append(token_logprobs)
            reason = self._stop_reason(seq, token)
            if reason:
                self.bookkeeping.finish(seq, reason)
            updated.append(seq)
        return updated

    def _isolate(self, batch: ScheduledBatch, error: Exception) -> list[Sequence]:
        """A step failed before reaching the device. Run its sequences again in halves, synchronously,
        until the ones that fail alone are found; those end with ``finish_reason="error"``, the rest go on.
        Returns every sequence updated meanwhile (the step in flight's included)."""
        logger.warning("a step of %d sequences failed (%s: %s); retrying it in parts", len(batch),
                       type(error).__name__, error)
        updated = self._collect(self._in_flight) if self._in_flight is not None else []
        self._in_flight = None
        parts = [batch]
        while parts:
            part = parts.pop()
            live = ScheduledBatch()
            for seq, n in zip(part.seqs, part.num_new_tokens):
                if not seq.is_finished:
                    live.add(seq, n)
            if not live:
                continue
            try:
                submitted = self._submit(live)
            except WorkerError:
                raise
            except Exception as e:
                if len(live) == 1:
                    seq = live.seqs[0]
                    seq.error = f"{type(e).__name__}: {e}"
                    self.bookkeeping.finish(seq, "error")
                    updated.append(seq)
                else:
                    half = len(live) // 2
                    for lo, hi in ((half, len(live)), (0, half)):
                        sub = ScheduledBatch(live.seqs[lo:hi], live.num_new_tokens[lo:hi])
                        parts.append(sub)
                continue
            updated += self._collect(submitted)
        return updated

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        """Why the sequence ends with ``token``, if it does; updates its text when it keeps one."""
        params = seq.params
        may_stop = seq.num_output_tokens >= params.min_tokens
        reason = None
        if may_stop and token in seq.stop_token_ids:
            reason = "stop"
            seq.stop_reason = token if token in params.stop_token_ids else None  # None: EOS
        elif self.bookkeeping.ends_by_length(seq):
            reason = "length"
        if seq.detokenizer is not None:
            delta = seq.detokenizer.push([token], final=reason is not None)
            if not reason and may_stop and params.stop and self._find_stop_string(seq, len(delta)):
                reason = "stop"
        return reason

    @staticmethod
    def _find_stop_string(seq: Sequence, num_new_chars: int) -> bool:
        """Look for a stop string ending in the newest text; cut the text there (after it with
        ``include_stop_str_in_output``) and record it as the stop reason."""
        detok = seq.detokenizer
        longest = max(len(s) for s in seq.params.stop)
        start = max(0, len(detok.text) - num_new_chars - longest + 1)
        hits = [(i, s) for s in seq.params.stop if (i := detok.text.find(s, start)) != -1]
        if not hits:
            return False
        index, stop = min(hits)
        detok.text = detok.text[: index + len(stop) if seq.params.include_stop_str_in_output else index]
        seq.stop_reason = stop
        return True


def _wrap64(seed: int) -> int:
    """A seed + completion index kept a signed 64-bit integer (2**63 - 1 + 1 wraps to -2**63)."""
    return (seed + 2**63) % 2**64 - 2**63


def is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_token_ids(prompt) -> bool:
    """A prompt of token ids: a sequence of ints (not bools), but not bytes (a sequence of ints to Python)."""
    return (isinstance(prompt, SequenceABC) and not isinstance(prompt, (str, bytes, bytearray))
            and all(is_token_id(t) for t in prompt))
