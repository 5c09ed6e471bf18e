"""The two-phase fcfs policy: budgets, prefill before decode, preemption of the newest, resume first."""

import pytest

from minivllm.core.interfaces import SchedulerConfig
from minivllm.core.sampling_params import SamplingParams
from minivllm.core.sequence import Sequence, SequenceStatus
from minivllm.plugins.kv_allocators.prefix_cache import PrefixCacheAllocator
from minivllm.plugins.schedulers.fcfs import FCFSScheduler
from tests.plugins.scheduling import run_step

BS = 16


def make(num_blocks, max_num_seqs=512, max_num_batched_tokens=16384):
    config = SchedulerConfig(max_num_seqs, max_num_batched_tokens, max_model_len=1024)
    return FCFSScheduler(config, PrefixCacheAllocator(num_blocks, BS, enable_prefix_caching=False))


def seqs(*lengths):
    return [Sequence([1] * n, SamplingParams()) for n in lengths]


def test_prefill_respects_token_budget_and_seq_limit():
    sched = make(100, max_num_batched_tokens=100, max_num_seqs=3)
    a, b, c, d = seqs(40, 50, 20, 5)
    for s in (a, b, c, d):
        sched.add(s)
    step1 = run_step(sched)
    assert step1.seqs == [a, b] and step1.num_new_tokens == [40, 50]  # c would exceed 100 tokens
    step2 = run_step(sched)
    assert step2.seqs == [c] and step2.num_new_tokens == [20]  # prefill first; then 3 seqs are running
    step3 = run_step(sched)
    assert step3.seqs == [a, b, c] and step3.num_new_tokens == [1, 1, 1]  # d waits for a free seat
    assert list(sched.waiting) == [d]


def test_decode_preempts_newest_and_it_resumes_first():
    sched = make(4)  # 64 token slots
    a, b = seqs(32, 31)  # a: 2 blocks; b: 2 blocks (31 tokens + 1 sampled = 32)
    sched.add(a), sched.add(b)
    assert run_step(sched).seqs == [a, b]
    assert sched.allocator.num_free_blocks == 0
    step = run_step(sched)  # a's 33rd token needs a 3rd block: b, the newest, is preempted
    assert step.preempted == [b] and step.seqs == [a]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.block_table == []
    assert list(sched.waiting) == [b] and sched.num_preemptions == 1
    sched.finish(a)
    resumed = run_step(sched)
    assert resumed.seqs == [b] and resumed.num_new_tokens == [32]  # prompt + its generated tokens


def test_lone_sequence_preempting_itself_is_impossible_for_admitted_requests():
    sched = make(2)
    with pytest.raises(ValueError, match="needs up to 40 tokens \\(3 KV blocks of 16\\) but the KV cache has only 2"):
        sched.check_request(10, 40)
    sched.check_request(10, 32)


def test_requests_that_could_outgrow_the_budget_are_rejected():
    """A resumed sequence is recomputed whole in one step: its prompt and generated tokens must fit the budget."""
    sched = make(100, max_num_batched_tokens=64)
    with pytest.raises(
        ValueError,
        match="a request of up to 70 tokens \\(a prompt of 60 plus max_tokens\\) exceeds max_num_batched_tokens=64",
    ):
        sched.check_request(60, 70)
    sched.check_request(60, 64)
