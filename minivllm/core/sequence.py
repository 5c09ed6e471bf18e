"""A request's state as it moves through the engine."""

from __future__ import annotations

import itertools
from enum import Enum, auto

from minivllm.core.sampling_params import SamplingParams

_ids = itertools.count()


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    def __init__(self, token_ids: list[int], params: SamplingParams):
        self.seq_id = next(_ids)
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose K/V is in the cache
        self.num_cached_tokens = 0  # of those, how many came from the prefix cache at admission
        self.block_table: list[int] = []
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended it
        # tokens that end the sequence (EOS included unless ignored); the sampler bans them before min_tokens
        self.stop_token_ids: frozenset[int] = frozenset(params.stop_token_ids)
        self.detokenizer = None  # an IncrementalDetokenizer when the engine keeps the text as tokens arrive
        # per output token when params.logprobs is set: (sampled token's logprob, [(token id, logprob)] top-k)
        self.logprobs: list[tuple[float, list[tuple[int, float]]]] = []

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return f"Sequence(id={self.seq_id}, tokens={len(self)}, computed={self.num_computed_tokens}, {self.status.name})"

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append(self, token_id: int) -> None:
        self.token_ids.append(token_id)
