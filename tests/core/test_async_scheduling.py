"""The overlapped step pipeline (``async_scheduling``): the same outputs as the plain pipeline in every
feature that touches a sequence's end, no trace of a token sampled after a sequence ended, no block left
behind, and a failing request isolated from the others in its step."""

import pytest

from minivllm import LLM, EngineConfig, SamplingParams
from minivllm.core import plugins
from minivllm.core.engine import LLMEngine
from minivllm.core.interfaces import ScheduledBatch
from minivllm.plugins.samplers.default import DefaultSampler
from minivllm.plugins.schedulers.fcfs import FCFSScheduler
from tests.checkpoints import random_prompts

PROMPTS = random_prompts(8, 5, 40, seed=3)
SETTINGS = dict(kvcache_block_size=16, max_model_len=256)

# name -> (engine settings, sampling params): each exercises a way a sequence grows, stops or is moved
CASES = {
    "greedy, preemption": (dict(num_kvcache_blocks=8), SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)),
    "chunked, preemption": (
        dict(num_kvcache_blocks=8, scheduler="chunked", max_num_batched_tokens=24),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
    ),
    "seeded, penalties, min_tokens": (
        dict(),
        SamplingParams(
            temperature=1.0,
            seed=3,
            max_tokens=20,
            min_tokens=5,
            repetition_penalty=1.3,
            presence_penalty=0.5,
            frequency_penalty=0.2,
        ),
    ),
    "n=3 seeded, logprobs": (dict(), SamplingParams(temperature=0.8, seed=5, n=3, max_tokens=10, logprobs=3)),
    "stop strings": (dict(), SamplingParams(temperature=0.0, max_tokens=30, stop=["e", " a"])),
    "simple allocator": (
        dict(kv_allocator="simple", num_kvcache_blocks=8),
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_equal_the_plain_pipeline(llama_path, case):
    settings, params = CASES[case]
    runs = []
    for async_scheduling in (False, True):
        llm = LLM(llama_path, async_scheduling=async_scheduling, **SETTINGS, **settings)
        runs.append(llm.generate(PROMPTS, params, use_tqdm=False))
        assert not llm.engine.has_unfinished()
        assert llm.engine.allocator.num_free_blocks == llm.engine.allocator.num_blocks
    assert runs[0] == runs[1]


@pytest.fixture(scope="module")
def overlapped(llama_path):
    return LLM(llama_path, async_scheduling=True, **SETTINGS)


def test_a_stop_at_step_n_leaves_no_trace_of_step_n_plus_1(overlapped):
    """The step after the stop token was already on the device when the stop became known: its token is
    dropped, so tokens, text, logprobs and the steps' updates are exactly those of the plain pipeline."""
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=1)
    plain = LLM(overlapped.config.model, async_scheduling=False, **SETTINGS)
    tokens = plain.generate(PROMPTS[:1], greedy, use_tqdm=False)[0]["tokens"]
    stop = tokens[5]
    params = greedy.model_copy(update={"stop_token_ids": [stop]})
    engine = overlapped.engine
    (seq,) = engine.make_sequences(PROMPTS[0], params, detokenize=True)
    engine.add(seq)
    updates = []
    while engine.has_unfinished():
        updates += [s for s in engine.step() if s is seq]
    expected = tokens[: tokens.index(stop) + 1]
    assert seq.output_token_ids == expected and len(updates) == len(expected)
    assert len(seq.logprobs) == len(expected) and seq.num_pending_tokens == 0
    assert seq.finish_reason == "stop" and seq.stop_reason == stop
    assert seq.detokenizer.text == plain.tokenizer.decode(expected)
    assert plain.generate(PROMPTS[:1], params, use_tqdm=False)[0]["tokens"] == expected


def test_an_abort_in_flight_frees_every_block(overlapped):
    engine = overlapped.engine
    seqs = [s for p in PROMPTS for s in engine.make_sequences(p, SamplingParams(max_tokens=50, ignore_eos=True))]
    for seq in seqs:
        engine.add(seq)
    for _ in range(3):
        engine.step()
    assert engine._in_flight is not None and all(s.num_pending_tokens == 1 for s in seqs)
    lengths = [s.num_output_tokens for s in seqs]
    for seq in seqs:
        engine.abort(seq)
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks  # freed at once
    assert engine.step() == [] and not engine.has_unfinished()  # the step in flight arrives: dropped
    assert [s.num_output_tokens for s in seqs] == lengths and all(s.finish_reason == "abort" for s in seqs)


def test_a_sequence_ending_by_length_leaves_the_scheduler_when_its_last_token_is_submitted(overlapped):
    engine = overlapped.engine
    (seq,) = engine.make_sequences([1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True))
    engine.add(seq)
    engine.step()  # prefill: samples token 1 of 2
    engine.step()  # decode: samples token 2 (its last) -> the sequence leaves, its blocks are free
    assert seq not in engine.scheduler.running and engine.allocator.num_free_blocks == engine.allocator.num_blocks
    assert not seq.is_finished and seq.num_output_tokens == 1
    while engine.has_unfinished():
        engine.step()
    assert seq.finish_reason == "length" and seq.num_output_tokens == 2


class _Touchy(DefaultSampler):
    """Fails whenever a row asks for seed 13: a bad request that got past validation."""

    def sample(self, logits, batch):
        if any(p.seed == 13 for p in batch.params):
            raise ValueError("seed 13 is unlucky")
        return super().sample(logits, batch)


@pytest.fixture
def touchy():
    plugins.load_plugins()
    plugins.samplers.register("touchy", _Touchy, source="test")
    yield "touchy"
    plugins.load_plugins(reload=True)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_failing_request_is_isolated_from_its_batch(llama_path, touchy, async_scheduling):
    engine = LLMEngine(EngineConfig(model=llama_path, sampler=touchy, async_scheduling=async_scheduling, **SETTINGS))
    good = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    seqs = [engine.make_sequence(p, good) for p in PROMPTS[:5]]
    bad = engine.make_sequence(PROMPTS[5], SamplingParams(seed=13, max_tokens=6))
    for seq in seqs[:2] + [bad] + seqs[2:]:
        engine.add(seq)
    first = engine.step()  # one prefill step of all six fails; halves are retried until `bad` is alone
    assert bad in first and bad.finish_reason == "error" and bad.error == "ValueError: seed 13 is unlucky"
    while engine.has_unfinished():
        engine.step()
    reference = LLM(llama_path, **SETTINGS).generate(PROMPTS[:5], good, use_tqdm=False)
    assert [s.output_token_ids for s in seqs] == [r["tokens"] for r in reference]
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_the_offline_api_raises_the_failing_prompts_error(llama_path, touchy):
    llm = LLM(llama_path, sampler=touchy, **SETTINGS)
    with pytest.raises(RuntimeError, match="prompt 1: ValueError: seed 13 is unlucky"):
        llm.generate(PROMPTS[:3], [SamplingParams(), SamplingParams(seed=13), SamplingParams()], use_tqdm=False)
    assert not llm.engine.has_unfinished()
    assert llm.engine.allocator.num_free_blocks == llm.engine.allocator.num_blocks


class _Stuck(FCFSScheduler):
    def schedule(self):
        return ScheduledBatch()


def test_a_scheduler_that_makes_no_progress_is_an_error_not_a_spin(llama_path):
    plugins.load_plugins()
    plugins.schedulers.register("stuck", _Stuck, source="test")
    try:
        llm = LLM(llama_path, scheduler="stuck", **SETTINGS)
        with pytest.raises(
            RuntimeError,
            match="'stuck' scheduler returned an empty batch while 0 running and 1 waiting sequences are unfinished",
        ):
            llm.generate([[1, 2, 3]], use_tqdm=False)
    finally:
        plugins.load_plugins(reload=True)
