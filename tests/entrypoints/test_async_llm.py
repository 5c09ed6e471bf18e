"""AsyncLLM: the background loop batches concurrent requests, aborts free blocks, bad input is refused."""

import asyncio

import pytest

from minivllm import LLM, SamplingParams
from minivllm.entrypoints import AsyncLLM

SETTINGS = dict(kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=64)


@pytest.fixture(scope="module")
def engine(llama_path, async_scheduling):
    engine = AsyncLLM(llama_path, async_scheduling=async_scheduling, engine_process=True, **SETTINGS)
    yield engine
    engine.close()


async def collect(engine, prompt, params, request_id):
    texts, tokens, reasons = {}, {}, {}
    async for out in engine.generate(prompt, params, request_id):
        texts[out.index] = texts.get(out.index, "") + out.text
        tokens[out.index] = tokens.get(out.index, []) + out.token_ids
        reasons[out.index] = out.finish_reason
        assert out.num_output_tokens == len(tokens[out.index])
    return texts, tokens, reasons


def test_concurrent_requests_match_offline(engine, llama_path):
    prompts = ["The capital of France", "A paged KV cache", "Greedy decoding picks", "Once upon"]
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=16, ignore_eos=True, n=2)

    async def main():
        return await asyncio.gather(*[collect(engine, p, params, f"r{i}") for i, p in enumerate(prompts)])

    results = asyncio.run(main())
    offline = LLM(llama_path, **SETTINGS).generate(prompts, params, use_tqdm=False)
    for (texts, tokens, reasons), out in zip(results, offline):
        assert [texts[j] for j in range(2)] == [c["text"] for c in out["outputs"]]
        assert [tokens[j] for j in range(2)] == [c["tokens"] for c in out["outputs"]]
        assert reasons == {0: "length", 1: "length"}
    sample = engine.metrics.registry.get_sample_value
    label = {"model_name": engine.served_model_name}
    assert sample("minivllm:batch_size_bucket", {**label, "le": "1.0"}) < sample("minivllm:batch_size_count", label)
    assert sample("minivllm:request_success_total", {**label, "finished_reason": "length"}) >= 8  # 4 prompts, n=2
    assert engine.stats()["kv_used"] == 0


def test_abort_frees_blocks(engine):
    params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)

    async def main():
        outs = []
        async for out in engine.generate("Once upon a time", params, "victim"):
            outs.append(out)
            if len(outs) == 3:
                engine.abort("victim")
        return outs

    outs = asyncio.run(main())
    assert outs[-1].finish_reason == "abort" and outs[-1].finished and len(outs) < 100
    assert engine.stats() == {"running": 0, "waiting": 0, "kv_used": 0, "kv_total": 64}


def test_cancelled_consumer_aborts(engine):
    params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)

    async def main():
        task = asyncio.create_task(collect(engine, "Once upon a time", params, "cancelled"))
        while engine.stats()["kv_used"] == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(1000):  # the loop frees the blocks before its next step
            if engine.stats()["kv_used"] == 0:
                return True
            await asyncio.sleep(0.005)
        return False

    assert asyncio.run(main())


def test_bad_requests_raise_and_the_loop_keeps_serving(engine):
    async def main():
        with pytest.raises(ValueError, match="too long"):
            engine.generate([5] * 200, SamplingParams(), "long")
        with pytest.raises(ValueError, match="vocabulary"):
            engine.generate([10**6], SamplingParams(), "oov")
        with pytest.raises(ValueError, match="a prompt must be a string or a list of token ids, got int"):
            engine.generate(123, SamplingParams(), "int")
        with pytest.raises(ValueError, match="got a list holding bool"):
            engine.generate([True, False], SamplingParams(), "bools")
        with pytest.raises(ValueError, match="sampling params must be a SamplingParams, got dict"):
            engine.generate("x", {"temperature": 0}, "dict")
        return await collect(engine, "Hi", SamplingParams(max_tokens=3, ignore_eos=True), "fine")

    texts, tokens, reasons = asyncio.run(main())
    assert len(tokens[0]) == 3 and reasons[0] == "length"


def test_close_fails_running_requests(llama_path):
    engine = AsyncLLM(llama_path, engine_process=True, **SETTINGS)

    async def main():
        stream = engine.generate("Once upon a time", SamplingParams(max_tokens=100, ignore_eos=True), "r")
        await anext(stream)
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        with pytest.raises(RuntimeError, match="closed"):
            async for _ in stream:
                pass

    asyncio.run(main())
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate("Hi", SamplingParams(), "late")


def test_a_failing_request_fails_alone_and_the_loop_goes_on(llama_path):
    """A sampler that raises on one request's rows (a bad request the validation let through): that
    request gets the error, the requests batched with it finish normally, and no block is left behind."""
    from minivllm.core import plugins
    from minivllm.plugins.samplers.default import DefaultSampler

    class Touchy(DefaultSampler):
        def sample(self, logits, batch):
            if any(p.seed == 13 for p in batch.params):
                raise ValueError("seed 13 is unlucky")
            return super().sample(logits, batch)

    plugins.load_plugins()
    plugins.samplers.register("touchy", Touchy, source="test")
    # the plugin is registered in this process only: the engine core runs on a thread here
    engine = AsyncLLM(llama_path, sampler="touchy", engine_process=False, **SETTINGS)
    ok = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

    async def main():
        lucky = [asyncio.create_task(collect(engine, f"Hi {i}", ok, f"lucky{i}")) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="ValueError: seed 13 is unlucky"):
            await collect(engine, "Hi", SamplingParams(seed=13, max_tokens=8), "unlucky")
        return await asyncio.gather(*lucky)

    try:
        results = asyncio.run(main())
        assert [len(tokens[0]) for _, tokens, _ in results] == [8, 8, 8]
        assert engine.stats()["kv_used"] == 0 and engine.stats()["running"] == 0
        finished = {
            reason: engine.metrics.registry.get_sample_value(
                "minivllm:request_success_total", {"model_name": llama_path, "finished_reason": reason}
            )
            for reason in ("error", "length")
        }
        assert finished == {"error": 1, "length": 3}
    finally:
        engine.close()
        plugins.load_plugins(reload=True)


def test_request_ids_are_unique_while_running(engine):
    params = SamplingParams(max_tokens=5, ignore_eos=True)

    async def main():
        first = engine.generate("Hi", params, "same")
        with pytest.raises(ValueError, match="already running"):
            engine.generate("Hi", params, "same")
        outs = [out async for out in first]
        again = [out async for out in engine.generate("Hi", params, "same")]  # free again once finished
        return outs, again

    outs, again = asyncio.run(main())
    assert sum(len(o.token_ids) for o in outs) == sum(len(o.token_ids) for o in again) == 5


def test_abort_of_a_large_n_ends_every_completion_once(engine):
    params = SamplingParams(temperature=1.0, max_tokens=100, ignore_eos=True, n=128)

    async def main():
        outs = []
        async for out in engine.generate([1, 2, 3], params, "wide"):
            outs.append(out)
            if len(outs) == 128:  # mid-way: some completions have tokens, others still wait for blocks
                engine.abort("wide")
        return outs

    outs = asyncio.run(main())
    last = {}
    for out in outs:
        assert out.index not in last or last[out.index].finish_reason is None  # nothing after a completion's end
        last[out.index] = out
    assert sorted(last) == list(range(128)) and {o.finish_reason for o in last.values()} == {"abort"}
    assert [o.finished for o in outs].count(True) == 1 and outs[-1].finished
    assert engine.stats()["kv_used"] == 0


def test_begin_shutdown_aborts_everything_and_refuses_new_requests(llama_path):
    from minivllm.entrypoints.async_llm import EngineClosedError

    engine = AsyncLLM(llama_path, engine_process=True, **SETTINGS)
    params = SamplingParams(max_tokens=100, ignore_eos=True)

    async def main():
        streams = [
            engine.generate("Once upon a time", params.model_copy(update={"n": 3}), "a"),
            engine.generate([1, 2, 3], params, "b"),
        ]
        firsts = [await anext(s) for s in streams]
        engine.begin_shutdown()
        with pytest.raises(EngineClosedError, match="shutting down"):
            engine.generate("Hi", params, "late")
        rests = []
        for s in streams:  # an async comprehension inside a list comprehension needs Python 3.11
            rests.append([out async for out in s])
        return [[first, *rest] for first, rest in zip(firsts, rests)]

    try:
        a, b = asyncio.run(main())
        ends = {out.index: out.finish_reason for out in a if out.finish_reason}
        assert ends == {0: "abort", 1: "abort", 2: "abort"} and a[-1].finished
        assert b[-1].finish_reason == "abort" and b[-1].finished and len(b) < 100
        assert engine.stats()["kv_used"] == 0
    finally:
        engine.close()


def test_metrics_read_while_the_loop_writes(engine):
    """/metrics used to iterate a deque the loop thread was changing ("deque mutated during iteration").
    Now: render without pause from another thread while 8 requests run, and the counts add up."""
    import threading

    sample = engine.metrics.registry.get_sample_value
    label = {"model_name": engine.served_model_name}
    names = [
        "minivllm:generation_tokens_total",
        "minivllm:prompt_tokens_total",
        "minivllm:time_to_first_token_seconds_count",
        "minivllm:e2e_request_latency_seconds_count",
        "minivllm:request_time_per_output_token_seconds_count",
    ]
    before = {name: sample(name, label) for name in names}
    stop, renders, errors = threading.Event(), [], []

    def scrape():
        while not stop.is_set():
            try:
                renders.append(len(engine.metrics.render()))
            except Exception as e:  # noqa: BLE001 (any failure is the finding)
                errors.append(e)

    prompts = [[1, 2, 3, i + 4] for i in range(8)]

    async def main():
        params = SamplingParams(max_tokens=20, ignore_eos=True)
        return await asyncio.gather(*[collect(engine, p, params, f"m{i}") for i, p in enumerate(prompts)])

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        thread.join()
    assert not errors and len(renders) > 10
    after = {name: sample(name, label) - before[name] for name in names}
    assert after == {
        "minivllm:generation_tokens_total": 8 * 20,
        "minivllm:prompt_tokens_total": 8 * 4,
        "minivllm:time_to_first_token_seconds_count": 8,
        "minivllm:e2e_request_latency_seconds_count": 8,
        "minivllm:request_time_per_output_token_seconds_count": 8,
    }


def test_two_engines_keep_their_own_metrics(engine, llama_path):
    other = AsyncLLM(llama_path, served_model_name=engine.served_model_name, engine_process=True, **SETTINGS)
    try:
        label = {"model_name": engine.served_model_name}
        before = engine.metrics.registry.get_sample_value("minivllm:generation_tokens_total", label)
        asyncio.run(collect(other, "Hi", SamplingParams(max_tokens=3, ignore_eos=True), "x"))
        assert other.metrics.registry.get_sample_value("minivllm:generation_tokens_total", label) == 3
        assert engine.metrics.registry.get_sample_value("minivllm:generation_tokens_total", label) == before
    finally:
        other.close()


def test_tokenizing_runs_on_its_own_thread(engine):
    import threading

    async def main():
        return await engine.tokenize(lambda: (threading.current_thread().name, engine.encode("Hello there")))

    thread, ids = asyncio.run(main())
    assert thread.startswith("minivllm-tokenizer") and ids == engine.tokenizer.encode("Hello there")
