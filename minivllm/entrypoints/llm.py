"""The offline API: ``LLM(model=...).generate(prompts, sampling_params)``, ``stream(...)`` and ``chat(...)``."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as SequenceABC

from tqdm.auto import tqdm

from minivllm.core.config import EngineConfig
from minivllm.core.engine import LLMEngine
from minivllm.core.requests import is_token_ids
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence
from minivllm.entrypoints.chat import chat_prompt
from minivllm.entrypoints.outputs import completion, releasable_text

Prompt = str | list[int]
Message = dict[str, str]


class LLM:
    def __init__(self, model: str | None = None, **kwargs):
        """``model``: a checkpoint directory, a .gguf file or a hub id; None: the embedded SmolLM2-135M.
        ``kwargs``: the other :class:`EngineConfig` settings."""
        self.config = EngineConfig(**kwargs) if model is None else EngineConfig(model=model, **kwargs)
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
        with ``prompt``, ``text``, ``tokens`` (generated ids), ``finished``, ``finish_reason``,
        ``stop_reason`` and ``logprobs`` of the first completion, and ``outputs``: all ``n`` completions
        (each with ``index`` and those fields). Every request is validated before any work starts; a bad
        one raises ValueError."""
        prompts = self._as_prompt_list(prompts)
        requests = self._add_requests(prompts, sampling_params, detokenize=False)
        seqs = [seq for group in requests for seq in group]
        bar = tqdm(total=len(seqs), desc="Generating", unit="req", disable=not use_tqdm, dynamic_ncols=True)
        generated = 0
        try:
            while self.engine.has_unfinished():
                updated = self.engine.step()
                _raise_failed(updated, requests)
                generated += len(updated)
                bar.set_postfix_str(f"{generated / max(bar.format_dict['elapsed'], 1e-9):.0f} tok/s", refresh=False)
                bar.update(sum(seq.is_finished for seq in updated))
        finally:
            bar.close()
            self._abort(seqs)
        results = []
        for prompt, group in zip(prompts, requests):
            outputs = [completion(seq, self.tokenizer, i) for i, seq in enumerate(group)]
            first = {k: v for k, v in outputs[0].items() if k != "index"}
            results.append({"prompt": prompt, **first, "outputs": outputs})
        return results

    def stream(
        self,
        prompts: Prompt | SequenceABC[Prompt],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
    ) -> Iterator[dict]:
        """Generate like :meth:`generate`, yielding as tokens are produced one dict per completion that
        advanced: ``index`` (the prompt's), ``completion`` (0..n-1), ``delta`` (new text; never a split
        character, and never the start of a stop string that will be cut), ``tokens`` (generated ids so
        far), ``finished`` and ``finish_reason``. Closing the iterator early aborts what is left."""
        prompts = self._as_prompt_list(prompts)
        requests = self._add_requests(prompts, sampling_params, detokenize=self.tokenizer is not None)
        where = {seq.seq_id: (i, j) for i, group in enumerate(requests) for j, seq in enumerate(group)}
        sent = dict.fromkeys(where, 0)  # characters of each sequence's text already yielded
        try:
            while self.engine.has_unfinished():
                updated = self.engine.step()
                _raise_failed(updated, requests)
                for seq in updated:
                    text = releasable_text(seq) if seq.detokenizer is not None else ""
                    delta, sent[seq.seq_id] = text[sent[seq.seq_id] :], len(text)
                    index, j = where[seq.seq_id]
                    yield {
                        "index": index,
                        "completion": j,
                        "delta": delta,
                        "tokens": seq.output_token_ids,
                        "finished": seq.is_finished,
                        "finish_reason": seq.finish_reason,
                    }
        finally:
            self._abort([seq for group in requests for seq in group])

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        chat_template: str | None = None,
        use_tqdm: bool = True,
    ) -> list[dict]:
        """Generate the assistant's reply to one conversation (a list of ``{"role", "content"}`` dicts) or
        to each of several, rendered with the checkpoint's chat template (or ``chat_template``, a Jinja
        string). Returns what :meth:`generate` returns, ``prompt`` being the rendered token ids."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [chat_prompt(self.tokenizer, conv, chat_template) for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _add_requests(self, prompts: list[Prompt], sampling_params, detokenize: bool) -> list[list[Sequence]]:
        """Validate every request, then queue them all; one group of ``n`` sequences per prompt."""
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling params for {len(prompts)} prompts")
        requests = []
        for i, (prompt, params) in enumerate(zip(prompts, sampling_params)):
            try:
                requests.append(self.engine.make_sequences(self.engine.encode(prompt), params, detokenize))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        for group in requests:
            for seq in group:
                self.engine.add(seq)
        return requests

    def _abort(self, seqs: list[Sequence]) -> None:
        """Release what an interrupted call leaves unfinished, so the engine stays usable."""
        for seq in seqs:
            self.engine.abort(seq)

    @staticmethod
    def _as_prompt_list(prompts) -> list[Prompt]:
        """One prompt or a sequence of them as a list of prompts; what is no prompt is checked, with the
        prompt's index, where the prompts are encoded (LLMEngine.encode)."""
        if isinstance(prompts, str) or (prompts and is_token_ids(prompts)):
            return [prompts]  # a single prompt
        if (
            not isinstance(prompts, SequenceABC)
            or isinstance(prompts, (bytes, bytearray))
            or (prompts and all(isinstance(p, int) for p in prompts))
        ):  # bools, or ints and bools mixed
            return [prompts]  # not a prompt: encode() says why
        return list(prompts)


def _raise_failed(updated: list[Sequence], requests: list[list[Sequence]]) -> None:
    """A request that made a step fail (the engine finished it with ``finish_reason="error"``) ends the
    call with that error, naming the prompt; the caller's ``finally`` aborts the rest."""
    for seq in updated:
        if seq.finish_reason == "error":
            index = next(i for i, group in enumerate(requests) if seq in group)
            raise RuntimeError(f"prompt {index}: {seq.error}")
