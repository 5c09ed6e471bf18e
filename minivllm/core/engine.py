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
collected after a submit differs (the one just submitted, or the one before). A batch with a
structured-output row has its grammars' mask made once its forward pass is queued: the mask needs each
row's newest token, so the step in flight is collected then, while the device runs (see
structured_output.py).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from minivllm.core import plugins
from minivllm.core.bookkeeping import StepBookkeeping
from minivllm.core.config import EngineConfig
from minivllm.core.cpu import choose_threads
from minivllm.core.detokenizer import push_text
from minivllm.core.interfaces import ScheduledBatch
from minivllm.core.parallel.executor import WorkerError, create_executor
from minivllm.core.requests import RequestFactory
from minivllm.core.runner_setup import RunnerSetup
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.core.step import StepFuture
from minivllm.core.structured_output import StructuredOutputs, TokenMask

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
            num_blocks,
            config.kvcache_block_size,
            num_blocks * self.executor.block_bytes / 2**30,
            num_blocks * config.kvcache_block_size / self.max_model_len,
            self.max_model_len,
        )
        self.scheduler = config.build_scheduler(self.max_model_len, num_blocks)
        self.allocator = self.scheduler.allocator
        self.bookkeeping = StepBookkeeping(self.scheduler, self.max_model_len)
        self.requests = RequestFactory(
            self.vocab_size, self.max_model_len, self.tokenizer, self.eos_token_ids, self.scheduler.check_request
        )
        self.structured = self.requests.grammars
        self.async_scheduling = config.resolved_async_scheduling
        self._in_flight: _Submitted | None = None  # with async scheduling: the step whose tokens come next
        self._compiling: list[Sequence] = []  # added, waiting for their grammar's matcher

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (idempotent)."""
        self.executor.close()
        self.requests.close()

    def encode(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids (see :meth:`RequestFactory.encode`)."""
        return self.requests.encode(prompt)

    def make_sequence(self, token_ids: list[int], params: SamplingParams, detokenize: bool = False) -> Sequence:
        """Validate a request and make its sequence (see :class:`RequestFactory`); nothing is queued."""
        return self.requests.make_sequence(token_ids, params, detokenize)

    def make_sequences(self, token_ids: list[int], params: SamplingParams, detokenize: bool = False) -> list[Sequence]:
        """The ``params.n`` sequences of one request (see :class:`RequestFactory`)."""
        return self.requests.make_sequences(token_ids, params, detokenize)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence from :meth:`make_sequence`; one with a grammar waits until its matcher is built."""
        if seq.params.structured_outputs is None:
            self.scheduler.add(seq)
        else:
            self.structured.start(seq)
            self._compiling.append(seq)

    def has_unfinished(self) -> bool:
        """Whether :meth:`step` has work left: sequences queued or compiling, or a step in flight whose tokens
        are still wanted (one whose sequences all ended meanwhile has nothing left to give)."""
        in_flight = self._in_flight
        return (
            bool(self._compiling)
            or self.scheduler.has_unfinished()
            or (in_flight is not None and not all(seq.is_finished for seq in in_flight.seqs))
        )

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence now and free its KV blocks (a token in flight for it is dropped on arrival)."""
        if seq in self._compiling:
            self._compiling.remove(seq)
        if not seq.is_finished:
            self.bookkeeping.finish(seq, "abort")

    def _admit_compiled(self) -> list[Sequence]:
        """Move the sequences whose matcher is built into the scheduler; one whose grammar failed ends with
        ``finish_reason="error"`` (returned). With nothing else to do, wait a little for a matcher first."""
        if not self.scheduler.has_unfinished() and self._in_flight is None:
            StructuredOutputs.wait(self._compiling, timeout=0.1)
        failed, waiting = [], []
        for seq in self._compiling:
            try:
                (self.scheduler.add if StructuredOutputs.ready(seq) else waiting.append)(seq)
            except Exception as e:
                seq.error = f"{type(e).__name__}: {e}"
                self.bookkeeping.finish(seq, "error")
                failed.append(seq)
        self._compiling = waiting
        return failed

    def step(self) -> list[Sequence]:
        """Run one step; returns the sequences that got a new token (finished ones included). With async
        scheduling these are the tokens of the step submitted by the previous call."""
        failed = self._admit_compiled() if self._compiling else []
        batch = self.scheduler.schedule()
        if not batch and self.scheduler.has_unfinished():
            raise RuntimeError(
                f"the {self.config.scheduler!r} scheduler returned an empty batch while {len(self.scheduler.running)} "
                f"running and {len(self.scheduler.waiting)} waiting sequences are unfinished: a scheduler bug "
                "(Scheduler.schedule must make progress)"
            )
        early: list[Sequence] = []  # the step in flight, when a grammar's mask needs its tokens first
        try:
            submitted = self._submit(batch, early) if batch else None
        except WorkerError:
            raise
        except Exception as e:  # a request the validation let through, or a plugin's bug: find who caused it
            if self.config.tensor_parallel_size > 1:
                raise  # the other ranks may have run the step: no way back
            return failed + early + self._isolate(batch, e)
        if self.async_scheduling:
            done, self._in_flight = self._in_flight, submitted
        else:
            done = submitted
        return failed + early + (self._collect(done) if done is not None else [])

    @staticmethod
    def _live(batch: ScheduledBatch) -> ScheduledBatch:
        """The batch without the sequences that ended since it was scheduled."""
        live = ScheduledBatch()
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if not seq.is_finished:
                live.add(seq, n)
        return live

    def _submit(self, batch: ScheduledBatch, early: list[Sequence] | None = None) -> _Submitted:
        """Queue the batch on the device and advance its sequences as if its tokens were known. With a
        constrained row the grammars' mask is made once the forward pass is queued (:meth:`_grammar_mask`);
        the sequences of the step in flight it collects meanwhile go to ``early``."""
        sampling = batch.sampling_seqs()
        mask = None
        if any(seq.grammar is not None for seq in sampling):
            mask = functools.partial(self._grammar_mask, sampling, [] if early is None else early)
        future = self.executor.submit(batch, mask)
        return _Submitted(self.bookkeeping.submitted(batch), future)

    def _grammar_mask(self, sampling: list[Sequence], early: list[Sequence]) -> TokenMask | None:
        """The runner calls this once the step's forward pass is queued. A matcher must have seen every token
        before its mask: if a constrained row's token is in flight, that step is collected first (into
        ``early``). A row that step ends samples unconstrained; its token is dropped when it arrives."""
        if self._in_flight is not None and any(seq.grammar is not None and seq.num_pending_tokens for seq in sampling):
            early += self._collect(self._in_flight)
            self._in_flight = None
        return self.structured.bitmask([seq for seq in sampling if not seq.is_finished])

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
            try:
                complete = seq.grammar is not None and self.structured.accept(seq, token)
            except ValueError as e:
                seq.error = str(e)
                self.bookkeeping.finish(seq, "error")
                updated.append(seq)
                continue
            reason = self._stop_reason(seq, token, complete)
            if reason:
                self.bookkeeping.finish(seq, reason)
            updated.append(seq)
        return updated

    def _isolate(self, batch: ScheduledBatch, error: Exception) -> list[Sequence]:
        """A step failed before reaching the device. Run its sequences again in halves, synchronously,
        until the ones that fail alone are found; those end with ``finish_reason="error"``, the rest go on.
        Returns every sequence updated meanwhile (the step in flight's included)."""
        logger.warning(
            "a step of %d sequences failed (%s: %s); retrying it in parts", len(batch), type(error).__name__, error
        )
        updated = self._collect(self._in_flight) if self._in_flight is not None else []
        self._in_flight = None
        parts = [batch]
        while parts:
            live = self._live(parts.pop())
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

    def _stop_reason(self, seq: Sequence, token: int, grammar_complete: bool) -> str | None:
        """Why the sequence ends with ``token``, if it does; updates its text when it keeps one."""
        params = seq.params
        may_stop = seq.num_output_tokens >= params.min_tokens
        reason = None
        if may_stop and token in seq.stop_token_ids:
            reason = "stop"
            seq.stop_reason = token if token in params.stop_token_ids else None  # None: EOS
        elif grammar_complete:  # the grammar takes nothing more (EOS at most)
            reason = "stop"
        elif self.bookkeeping.ends_by_length(seq):
            reason = "length"
        if seq.detokenizer is not None and push_text(seq, token, final=reason is not None):
            reason = "stop"
        return reason
