"""The offline API: ``LLM(model=...).generate(prompts, sampling_params)``."""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC

from tqdm.auto import tqdm

from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str, **kwargs):
        self.config = EngineConfig(model=model, **kwargs)
        self.engine = LLMEngine(self.config)
        self.tokenizer = self.engine.tokenizer

    def close(self) -> None:
        """Stop the tensor-parallel worker processes (also done when the LLM is garbage-collected or the
        interpreter exits). Idempotent; the LLM cannot generate afterwards."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(
        self,
        prompts: Prompt | SequenceABC[Prompt],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[dict]:
        """Generate for each prompt (a string or a list of token ids). Returns, in input order, dicts
        with ``prompt``, ``text``, ``tokens`` (generated ids), ``finished`` and ``finish_reason``.
        Every request is validated before any work starts; a bad one raises ValueError."""
        prompts = self._as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling params for {len(prompts)} prompts")
        seqs = []
        for i, (prompt, params) in enumerate(zip(prompts, sampling_params)):
            try:
                if isinstance(prompt, str) and self.tokenizer is None:
                    raise ValueError("this checkpoint has no tokenizer: pass token ids")
                token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
                seqs.append(self.engine.make_sequence(token_ids, params))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        for seq in seqs:
            self.engine.add(seq)
        bar = tqdm(total=len(seqs), desc="Generating", unit="req", disable=not use_tqdm, dynamic_ncols=True)
        generated = 0
        try:
            while self.engine.has_unfinished():
                updated = self.engine.step()
                generated += len(updated)
                bar.set_postfix_str(f"{generated / max(bar.format_dict['elapsed'], 1e-9):.0f} tok/s", refresh=False)
                bar.update(sum(seq.is_finished for seq in updated))
        finally:
            bar.close()
            for seq in seqs:  # interrupted: release what is left so the engine stays usable
                self.engine.abort(seq)
        return [
            {
                "prompt": prompt,
                "text": self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=True) if self.tokenizer else "",
                "tokens": seq.output_token_ids,
                "finished": seq.finish_reason in ("stop", "length"),
                "finish_reason": seq.finish_reason,
            }
            for prompt, seq in zip(prompts, seqs)
        ]

    @staticmethod
    def _as_prompt_list(prompts) -> list[Prompt]:
        if isinstance(prompts, str):
            return [prompts]
        prompts = list(prompts)
        if prompts and all(isinstance(t, int) for t in prompts):
            return [prompts]  # a single prompt of token ids
        for p in prompts:
            if not isinstance(p, str) and not (isinstance(p, SequenceABC) and all(isinstance(t, int) for t in p)):
                raise TypeError(f"a prompt must be a string or a list of token ids, got {type(p).__name__}")
        return [p if isinstance(p, str) else list(p) for p in prompts]
