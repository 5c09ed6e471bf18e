"""The chunked-prefill policy: mixed decode + prefill steps within the budget, and greedy parity
with transformers when prompts are far longer than the budget."""

import argparse
import random

import pytest

from minivllm import LLM, EngineConfig, SamplingParams
from minivllm.cli.serve import add_engine_arguments, engine_kwargs
from minivllm.core.interfaces import SchedulerConfig
from minivllm.core.sequence import Sequence
from minivllm.plugins.kv_allocators.prefix_cache import PrefixCacheAllocator
from minivllm.plugins.schedulers.chunked import ChunkedPrefillScheduler
from tests.checkpoints import hf_greedy, random_prompts
from tests.conftest import ARCHS
from tests.plugins.scheduling import run_step

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


def make(num_blocks, max_num_seqs=512, max_num_batched_tokens=16384, scheduler_options=None):
    config = SchedulerConfig(
        max_num_seqs, max_num_batched_tokens, max_model_len=2048, scheduler_options=scheduler_options or {}
    )
    return ChunkedPrefillScheduler(config, PrefixCacheAllocator(num_blocks, 16))


def test_a_step_mixes_decode_and_prefill_chunks():
    sched = make(100, max_num_batched_tokens=64)
    short, long = Sequence([5] * 20, SamplingParams(max_tokens=50)), Sequence([6] * 150, SamplingParams(max_tokens=50))
    sched.add(short)
    assert run_step(sched).num_new_tokens == [20]
    sched.add(long)
    step = run_step(sched)
    assert step.seqs == [short, long] and step.num_new_tokens == [1, 63]  # decode first, then a chunk
    step = run_step(sched)
    assert step.num_new_tokens == [1, 63]
    step = run_step(sched)
    assert step.num_new_tokens == [1, 24] and long.num_output_tokens == 1  # last chunk samples


def test_long_prefill_threshold_caps_each_sequence():
    sched = make(100, max_num_batched_tokens=64, scheduler_options={"long_prefill_token_threshold": 16})
    a, b = Sequence([5] * 40, SamplingParams()), Sequence([6] * 40, SamplingParams())
    sched.add(a), sched.add(b)
    assert run_step(sched).num_new_tokens == [16, 16]


def test_budget_and_seat_limits_hold_under_load():
    rng = random.Random(0)
    sched = make(16, max_num_batched_tokens=48, max_num_seqs=5)
    for _ in range(30):
        prompt = [rng.randrange(500) for _ in range(rng.randint(1, 120))]
        sched.add(Sequence(prompt, SamplingParams(max_tokens=rng.randint(1, 30))))
    steps = mixed = 0
    while sched.has_unfinished():
        batch = run_step(sched)
        assert batch.num_tokens <= 48 and len(batch) <= 5 and len(sched.running) <= 5
        mixed += 1 in batch.num_new_tokens and any(n > 1 for n in batch.num_new_tokens)
        steps += 1
        assert steps < 2000
    assert mixed > 0 and sched.num_preemptions > 0
    assert sched.allocator.num_free_blocks == 16


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_with_budget_far_below_prompt_lengths(checkpoints, arch, async_scheduling):
    path = checkpoints[arch]
    prompts = random_prompts(4, 250, 320, seed=7)
    llm = LLM(
        path,
        scheduler="chunked",
        max_num_batched_tokens=64,
        kvcache_block_size=16,
        max_model_len=512,
        async_scheduling=async_scheduling,
    )
    got = [o["tokens"] for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    assert got == hf_greedy(path, prompts, GREEDY.max_tokens)


def test_parity_with_shared_prefix_and_small_cache(checkpoints, async_scheduling):
    path = checkpoints["qwen3"]
    prefix = random_prompts(1, 100, 100, seed=8)[0]
    prompts = [prefix + tail for tail in random_prompts(6, 5, 60, seed=9)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    llm = LLM(
        path,
        scheduler="chunked",
        scheduler_options={"long_prefill_token_threshold": 24},
        max_num_batched_tokens=40,
        kvcache_block_size=16,
        num_kvcache_blocks=24,
        max_model_len=512,
        async_scheduling=async_scheduling,
    )
    got = [o["tokens"] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == hf_greedy(path, prompts, params.max_tokens)
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.allocator.num_free_blocks == 24


def test_fcfs_rejects_what_chunked_accepts(llama_path):
    prompt = [3] * 100
    with pytest.raises(ValueError, match="exceeds max_num_batched_tokens=64"):
        LLM(llama_path, max_num_batched_tokens=64, kvcache_block_size=16, max_model_len=256).generate(
            [prompt], GREEDY, use_tqdm=False
        )
    llm = LLM(llama_path, scheduler="chunked", max_num_batched_tokens=64, kvcache_block_size=16, max_model_len=256)
    assert len(llm.generate([prompt], GREEDY, use_tqdm=False)[0]["tokens"]) == GREEDY.max_tokens


@pytest.mark.parametrize(
    ("scheduler", "options", "message"),
    [
        (
            "chunked",
            {"long_prefill_token_threshold": -1},
            "scheduler 'chunked' option 'long_prefill_token_threshold': Input should be greater than or equal to 0",
        ),
        (
            "chunked",
            {"long_prefill_threshold": 8},
            "scheduler 'chunked' has no option 'long_prefill_threshold' "
            "\\(its options: long_prefill_token_threshold\\)",
        ),
        (
            "fcfs",
            {"long_prefill_token_threshold": 8},
            "scheduler 'fcfs' has no option 'long_prefill_token_threshold' \\(its options: none\\)",
        ),
        ("chunked", "{not json", "scheduler_options\n  Value error, Expecting property name"),
    ],
)
def test_options_are_validated_naming_the_plugin_and_field(llama_path, scheduler, options, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model=llama_path, scheduler=scheduler, scheduler_options=options)


def test_options_come_as_json_from_the_command_line(llama_path):
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    args = parser.parse_args(["--scheduler", "chunked", "--scheduler-options", '{"long_prefill_token_threshold": 8}'])
    config = EngineConfig(model=llama_path, **engine_kwargs(args))
    sched = ChunkedPrefillScheduler(config.scheduler_config(max_model_len=256), PrefixCacheAllocator(4, 16))
    assert sched.options.long_prefill_token_threshold == 8
