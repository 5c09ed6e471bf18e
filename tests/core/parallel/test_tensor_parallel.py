"""Tensor parallelism on the CPU: gloo with 2 and 4 ranks gives the same greedy tokens as one rank and as
transformers; workers load plugins, start and stop cleanly, and their failures surface as errors."""

import faulthandler
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from minivllm import LLM, SamplingParams
from minivllm.core import plugins
from minivllm.core.parallel.executor import WorkerError
from tests.checkpoints import hf_greedy, random_prompts
from tests.conftest import ARCHS
from tests.processes import children, wait_gone

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=8, ignore_eos=True)
PROMPTS = random_prompts(6, 5, 40, seed=11)
SHARED = [PROMPTS[0] + tail for tail in random_prompts(2, 1, 10, seed=12)]  # prefix-cache hits on PROMPTS[0]
SMALL = dict(kvcache_block_size=16, max_model_len=256, dtype="float32")
# 6 blocks of 16 tokens hold about two of these sequences: the rest queue, and decode preempts
TIGHT = dict(SMALL, num_kvcache_blocks=6)


@pytest.fixture(autouse=True)
def one_thread_and_no_hang():
    """Rank 0 and each worker (which takes this process's threads / tp) run on one thread. A test that
    hangs (the failure these tests guard against) dumps every thread's stack and ends the run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(180, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    torch.set_num_threads(threads)


def _tokens(llm, prompts, params=GREEDY):
    return [out["tokens"] for out in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def references(checkpoints):
    """arch -> (transformers greedy tokens, tensor_parallel_size=1 tokens) for PROMPTS + SHARED, and TP=1's
    seeded samples."""
    refs = {}
    for arch in ARCHS:
        path = checkpoints[arch]
        llm = LLM(path, **TIGHT)
        refs[arch] = (
            hf_greedy(path, PROMPTS + SHARED, GREEDY.max_tokens),
            _tokens(llm, PROMPTS) + _tokens(llm, SHARED),
            _tokens(llm, PROMPTS[:2], SAMPLED),
        )
    return refs


@pytest.mark.parametrize(
    ("tp", "settings"),
    [(2, dict(scheduler="chunked", max_num_batched_tokens=24)), (4, dict(scheduler="fcfs"))],
    ids=["2-chunked", "4-fcfs"],
)
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_one_rank_and_transformers(checkpoints, references, arch, tp, settings, async_scheduling):
    expected, one_rank, sampled = references[arch]
    # 4 ranks of a model with 2 KV heads: each KV head is replicated on two ranks; the chunked scheduler
    # with a budget of 24 tokens splits prompts into chunks that sample nothing
    with LLM(checkpoints[arch], tensor_parallel_size=tp, async_scheduling=async_scheduling, **settings, **TIGHT) as llm:
        got = _tokens(llm, PROMPTS) + _tokens(llm, SHARED)
        assert got == one_rank
        assert got == expected
        assert llm.engine.scheduler.num_preemptions > 0  # workers rebuilt block tables after preemption
        assert _tokens(llm, PROMPTS[:2], SAMPLED) == sampled
        assert len(multiprocessing.active_children()) == tp - 1


def test_one_rank_stays_in_process(llama_path):
    from minivllm.core.parallel.executor import InProcessExecutor

    before = children()
    llm = LLM(llama_path, **SMALL)
    assert type(llm.engine.executor) is InProcessExecutor
    assert children() == before
    llm.close()


def test_vocabulary_that_does_not_split_evenly(llama_path, tmp_path):
    """511 tokens over 2 ranks: the last vocabulary shard is padded (embedding and untied LM head)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(tmp_path / "vocab511")
    model = AutoModelForCausalLM.from_pretrained(llama_path)
    model.resize_token_embeddings(511)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(llama_path).save_pretrained(path)
    prompts = [p + [510] for p in PROMPTS[:3]]  # the last token id lives in the padded shard
    with LLM(path, tensor_parallel_size=2, **SMALL) as llm:
        assert _tokens(llm, prompts) == hf_greedy(path, prompts, GREEDY.max_tokens)


def test_two_engines_coexist_then_stop_without_leaking(checkpoints):
    before = children()
    first = LLM(checkpoints["llama"], tensor_parallel_size=2, **SMALL)
    second = LLM(checkpoints["qwen2"], tensor_parallel_size=2, **SMALL)
    workers = children() - before
    assert len(workers) == 2
    many = random_prompts(160, 30, 60, seed=13)  # the first step's command outgrows one broadcast
    assert _tokens(first, many) == _tokens(LLM(checkpoints["llama"], **SMALL), many)
    assert _tokens(second, PROMPTS[:2]) == _tokens(LLM(checkpoints["qwen2"], **SMALL), PROMPTS[:2])
    first.close()
    first.close()  # idempotent
    with pytest.raises(RuntimeError, match="this LLM is closed"):
        first.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    del second  # garbage collection stops the workers too
    assert not wait_gone(workers)
    assert children() - before == set()
    assert not multiprocessing.active_children()


def test_workers_load_plugins(plugin_site, monkeypatch, llama_path):
    monkeypatch.setenv("MINIVLLM_PLUGINS", "test_plugin")
    plugins.load_plugins(reload=True)
    try:
        with LLM(llama_path, tensor_parallel_size=2, sampler="constant", **SMALL) as llm:
            assert _tokens(llm, [[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True)) == [[7, 7, 7, 7]]
        # a worker that cannot build its runner: it loads plugins from its own environment, which here
        # lacks the sampler rank 0 has; its traceback reaches the caller
        monkeypatch.setenv("MINIVLLM_PLUGINS", "")
        with pytest.raises(WorkerError, match="(?s)rank 1:.*unknown sampler 'constant'; registered: default"):
            LLM(llama_path, tensor_parallel_size=2, sampler="constant", **SMALL)
    finally:
        monkeypatch.undo()
        plugins.load_plugins(reload=True)
    assert not multiprocessing.active_children()


def test_killed_worker_is_an_error_not_a_hang(llama_path):
    llm = LLM(llama_path, tensor_parallel_size=2, **SMALL)
    (worker,) = multiprocessing.active_children()
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    start = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 exited with code -9"):
        llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    assert time.monotonic() - start < 10
    with pytest.raises(WorkerError, match="failed earlier"):
        llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    llm.close()
    assert not multiprocessing.active_children()


def test_error_on_every_rank_is_raised_as_itself(llama_path):
    with pytest.raises(ValueError, match="no memory is left for the KV cache"):
        LLM(llama_path, tensor_parallel_size=2, cpu_kvcache_space_gib=1e-9, **SMALL)
    assert not wait_gone(children())
    assert not multiprocessing.active_children()


RANK0_SCRIPT = """
import multiprocessing, sys, time
from minivllm import LLM
if __name__ == "__main__":
    llm = LLM(sys.argv[1], tensor_parallel_size=2, kvcache_block_size=16, max_model_len=256)
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(60)
"""


def test_workers_exit_when_rank0_dies(llama_path, tmp_path):
    script = tmp_path / "rank0.py"
    script.write_text(RANK0_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), llama_path], stdout=subprocess.PIPE, text=True)
    try:
        workers = {int(pid) for pid in proc.stdout.readline().split()}
        assert len(workers) == 1
        proc.kill()
        proc.wait()
        assert not wait_gone(workers)
    finally:
        proc.kill()


TORCHRUN_SCRIPT = """
import json, sys
from minivllm import LLM, SamplingParams
llm = LLM(sys.argv[1], tensor_parallel_size=2, kvcache_block_size=16, max_model_len=256)
# only rank 0 gets here: the other rank served it inside LLM(...) and exited when it closed
outs = llm.generate(json.loads(sys.argv[2]), SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
                    use_tqdm=False)
llm.close()
print("TOKENS", json.dumps([o["tokens"] for o in outs]), flush=True)
"""


def test_torchrun_rendezvous(llama_path, references, tmp_path):
    script = tmp_path / "tr.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            llama_path,
            json.dumps(PROMPTS[:3]),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("TOKENS")]
    assert len(lines) == 1  # printed by rank 0 only
    assert json.loads(lines[0].split(" ", 1)[1]) == references["llama"][0][:3]


def test_more_ranks_than_gpus_or_torchrun_ranks(llama_path, monkeypatch):
    from transformers import AutoConfig

    from minivllm.core.model_spec import ModelSpec
    from minivllm.core.parallel.distributed import check_tensor_parallel

    hf_config = ModelSpec.from_hf_config(AutoConfig.from_pretrained(llama_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 exceeds the 1 visible CUDA devices"):
        check_tensor_parallel(hf_config, 2, torch.device("cuda"))
    check_tensor_parallel(hf_config, 2, torch.device("cpu"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="tensor_parallel_size=2 but torchrun started WORLD_SIZE=4 ranks"):
        LLM(llama_path, tensor_parallel_size=2, **SMALL)


@pytest.mark.parametrize(
    ("tp", "edit", "message"),
    [
        (3, {}, "tensor_parallel_size=3 does not divide the model's 4 attention heads"),
        (8, {}, "tensor_parallel_size=8 does not divide the model's 4 attention heads"),
        (
            2,
            {"num_key_value_heads": 3},
            "tensor_parallel_size=2 neither divides nor is a multiple of the model's 3 key/value heads",
        ),
        (4, {"intermediate_size": 130}, "tensor_parallel_size=4 does not divide the model's intermediate_size=130"),
    ],
)
def test_bad_tensor_parallel_size_fails_before_any_process_starts(llama_path, tmp_path, tp, edit, message):
    path = llama_path
    if edit:  # only config.json is read before the check
        path = tmp_path / "edited"
        shutil.copytree(llama_path, path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(config | edit))
    before = children()
    with pytest.raises(ValueError, match=message):
        LLM(str(path), tensor_parallel_size=tp, **SMALL)
    assert children() == before
