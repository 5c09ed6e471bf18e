"""The engine: composes the plugins the config names; each step is schedule -> run -> update."""

from __future__ import annotations

import logging

from minivllm.core import plugins
from minivllm.core.checkpoint import Checkpoint
from minivllm.core.config import EngineConfig
from minivllm.core.detokenizer import IncrementalDetokenizer
from minivllm.core.executor import create_executor
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        plugins.load_plugins()
        self.config = config
        self.checkpoint = Checkpoint.open(config)
        hf = self.checkpoint.hf_config
        arch = self.checkpoint.architecture
        if arch not in plugins.models:
            raise ValueError(f"unsupported architecture {arch!r}; supported: {', '.join(plugins.models.names())}")
        self.max_model_len = min(config.max_model_len, getattr(hf, "max_position_embeddings", config.max_model_len))
        self.vocab_size = hf.vocab_size
        self.tokenizer = self.checkpoint.load_tokenizer(config.tokenizer)
        self.eos_token_ids = self.checkpoint.eos_token_ids(self.tokenizer)
        # the ModelRunner itself, or with tensor parallelism an executor driving one runner per rank
        self.runner = create_executor(config, self.checkpoint, self.max_model_len)
        num_blocks = config.num_kvcache_blocks
        if num_blocks == -1:
            num_blocks = self.runner.num_blocks_from_memory(config.max_num_seqs, self.max_model_len)
        self.runner.allocate_kv_cache(num_blocks)
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB); room for %.1f sequences of max_model_len=%d",
            num_blocks, config.kvcache_block_size, num_blocks * self.runner.block_bytes / 2**30,
            num_blocks * config.kvcache_block_size / self.max_model_len, self.max_model_len,
        )
        self.allocator = plugins.kv_allocators.get(config.kv_allocator)(
            num_blocks, config.kvcache_block_size, config.enable_prefix_caching
        )
        self.scheduler = plugins.schedulers.get(config.scheduler)(config, self.allocator, self.max_model_len)

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (idempotent)."""
        self.runner.close()

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
        if params.n == 1:
            return [self.make_sequence(token_ids, params, detokenize)]
        return [
            self.make_sequence(token_ids, params.model_copy(
                update={"n": 1, "seed": None if params.seed is None else params.seed + i}), detokenize)
            for i in range(params.n)
        ]

    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence now and free its KV blocks."""
        if not seq.is_finished:
            self._finish(seq, "abort")

    def step(self) -> list[Sequence]:
        """Run one step; returns the sequences that got a new token (finished ones included)."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        tokens, logprobs = self.runner.execute(batch)
        sampled = iter(zip(tokens, logprobs or [None] * len(tokens)))
        updated = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
            if seq.num_computed_tokens < len(seq):  # a prefill chunk: nothing sampled yet
                continue
            token, token_logprobs = next(sampled)
            seq.append(token)
            if token_logprobs is not None:
                seq.logprobs.append(token_logprobs)
            reason = self._stop_reason(seq, token)
            if reason:
                self._finish(seq, reason)
            updated.append(seq)
        return updated

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        """Why the sequence ends with ``token``, if it does; updates its text when it keeps one."""
        params = seq.params
        may_stop = seq.num_output_tokens >= params.min_tokens
        reason = None
        if may_stop and token in seq.stop_token_ids:
            reason = "stop"
            seq.stop_reason = token if token in params.stop_token_ids else None  # None: EOS
        elif seq.num_output_tokens >= params.max_tokens or len(seq) >= self.max_model_len:
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

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
