"""Engine behaviour through the public API: stop conditions, outputs, seeds, progress, prompt forms."""

import pytest

from minivllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(llama_path, async_scheduling):
    return LLM(llama_path, kvcache_block_size=16, max_model_len=128, async_scheduling=async_scheduling)


GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_stop_token_ends_generation_inclusively(llm):
    tokens = llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0]["tokens"]
    stop = tokens[4]
    first = tokens.index(stop)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, stop_token_ids=[stop])
    out = llm.generate([[1, 2, 3]], params, use_tqdm=False)[0]
    assert out["tokens"] == tokens[: first + 1] and out["finish_reason"] == "stop" and out["finished"]


def test_eos_stops_unless_ignored(llm):
    tokens = llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0]["tokens"]
    eos = tokens[3]
    llm.engine.eos_token_ids.add(eos)
    try:
        out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)[0]
        assert out["tokens"] == tokens[: tokens.index(eos) + 1] and out["finish_reason"] == "stop"
        assert llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0]["tokens"] == tokens
    finally:
        llm.engine.eos_token_ids.discard(eos)


def test_max_model_len_ends_with_length(llm):
    out = llm.generate([[5] * 120], SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True), use_tqdm=False)[0]
    assert len(out["tokens"]) == 8 and out["finish_reason"] == "length"


def test_text_prompts_and_outputs_in_input_order(llm):
    prompts = ["The capital of France", "A paged KV cache", "Greedy decoding picks"]
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o["prompt"] for o in outs] == prompts
    for prompt, out in zip(prompts, outs):
        alone = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
        assert out["tokens"] == alone["tokens"]
        assert out["text"] == llm.tokenizer.decode(out["tokens"], skip_special_tokens=True)


def test_single_token_id_prompt_and_per_prompt_params(llm):
    outs = llm.generate(
        [[1, 2, 3], [4, 5]], [GREEDY, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)], use_tqdm=False
    )
    assert [len(o["tokens"]) for o in outs] == [12, 3]
    assert llm.generate([1, 2, 3], GREEDY, use_tqdm=False)[0]["tokens"] == outs[0]["tokens"]


def test_seeded_sampling_is_reproducible_across_batches(llm):
    seeded = SamplingParams(temperature=1.0, max_tokens=16, seed=99, ignore_eos=True)
    alone = llm.generate([[7, 8, 9]], seeded, use_tqdm=False)[0]["tokens"]
    mixed = llm.generate(
        [[1, 2], [7, 8, 9], [3, 4, 5, 6]],
        [SamplingParams(max_tokens=5), seeded, SamplingParams(max_tokens=20)],
        use_tqdm=False,
    )
    assert mixed[1]["tokens"] == alone
    other_seed = llm.generate([[7, 8, 9]], seeded.model_copy(update={"seed": 100}), use_tqdm=False)[0]["tokens"]
    assert other_seed != alone


def test_progress_bar_reports_requests(llm, capsys):
    llm.generate([[1, 2], [3, 4]], GREEDY, use_tqdm=True)
    err = capsys.readouterr().err
    assert "Generating" in err and "2/2" in err and "tok/s" in err
