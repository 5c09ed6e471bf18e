"""Sampling completeness through the offline API: stop strings, min_tokens, n, penalties, logprobs;
streaming and chat; checked against transformers where it has the same feature."""

import pytest
import torch

from minivllm import LLM, SamplingParams
from minivllm.core.detokenizer import IncrementalDetokenizer
from minivllm.core.sampling import apply_penalties
from tests.checkpoints import hf_greedy
from tests.entrypoints import TEMPLATE

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def llm(llama_path, async_scheduling):
    return LLM(llama_path, kvcache_block_size=16, max_model_len=128, async_scheduling=async_scheduling)


def greedy(**kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": 30, "ignore_eos": True, **kw})


def test_params_names_defaults_and_validation():
    p = SamplingParams(stop="x")
    assert (
        p.n,
        p.stop,
        p.min_tokens,
        p.repetition_penalty,
        p.presence_penalty,
        p.frequency_penalty,
        p.logprobs,
        p.include_stop_str_in_output,
    ) == (1, ["x"], 0, 1.0, 0.0, 0.0, None, False)
    for bad in [
        dict(n=0),
        dict(min_tokens=5, max_tokens=2),
        dict(repetition_penalty=0.0),
        dict(presence_penalty=3.0),
        dict(logprobs=21),
        dict(stop=[""]),
        dict(max_tokens=-1),
    ]:
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_detokenizer_never_splits_a_character(llm):
    text = "héllo 世界 🙂 The capital"
    ids = llm.tokenizer.encode(text)
    detok = IncrementalDetokenizer(llm.tokenizer)
    deltas = [detok.push([t]) for t in ids]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # some byte tokens waited for the rest of their character


def test_stop_strings_cut_the_text(llm):
    full = llm.generate(PROMPT, greedy(), use_tqdm=False)[0]
    text = full["text"]
    k = next(i for i in range(5, len(text) - 1) if text[i : i + 2].isascii() and text[i : i + 2].isalpha())
    stop = text[k : k + 2]
    cut = text.index(stop)
    out = llm.generate(PROMPT, greedy(stop=[stop, "never appears"]), use_tqdm=False)[0]
    assert (out["text"], out["finish_reason"], out["stop_reason"]) == (text[:cut], "stop", stop)
    assert out["tokens"] == full["tokens"][: len(out["tokens"])] and len(out["tokens"]) < 30
    out = llm.generate(PROMPT, greedy(stop=stop, include_stop_str_in_output=True), use_tqdm=False)[0]
    assert out["text"] == text[: cut + 2]
    streamed = list(llm.stream(PROMPT, greedy(stop=stop)))
    assert "".join(s["delta"] for s in streamed) == text[:cut] and streamed[-1]["finish_reason"] == "stop"


def test_min_tokens_holds_back_eos(llm):
    tokens = llm.generate([[1, 2, 3]], greedy(), use_tqdm=False)[0]["tokens"]
    eos = tokens[2]
    llm.engine.eos_token_ids.add(eos)
    try:
        out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=30, min_tokens=8), use_tqdm=False)[0]
        assert len(out["tokens"]) >= 8 and eos not in out["tokens"][:8]
        assert out["tokens"][:2] == tokens[:2]
        assert out["finish_reason"] == "length" or out["tokens"][-1] == eos
    finally:
        llm.engine.eos_token_ids.discard(eos)


def test_repetition_penalty_matches_transformers(llm, llama_path):
    from transformers import AutoModelForCausalLM

    prompt = [5, 6, 7, 5, 6, 8]
    model = AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.float32).eval()
    ref = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=20,
        do_sample=False,
        repetition_penalty=1.8,
        pad_token_id=0,
        eos_token_id=None,
    )[0, len(prompt) :].tolist()
    out = llm.generate([prompt], greedy(max_tokens=20, repetition_penalty=1.8), use_tqdm=False)[0]["tokens"]
    assert out == ref
    assert out != llm.generate([prompt], greedy(max_tokens=20), use_tqdm=False)[0]["tokens"]


def test_presence_and_frequency_penalties():
    class Seq:  # what apply_penalties reads of a sequence
        def __init__(self, params, prompt, output):
            self.params, self.token_ids, self.num_prompt_tokens = params, prompt + output, len(prompt)
            self.output_token_ids = output

    logits = torch.zeros(2, 8)
    seqs = [
        Seq(SamplingParams(frequency_penalty=0.5, presence_penalty=1.0), [1], [3, 3, 5]),
        Seq(SamplingParams(repetition_penalty=2.0), [1], [2]),
    ]
    logits[1, 1], logits[1, 2], logits[1, 4] = 4.0, -4.0, 4.0
    out = apply_penalties(logits, seqs, None)
    assert out[0].tolist() == [0, 0, 0, -2.0, 0, -1.5, 0, 0]
    assert out[1].tolist() == [0, 2.0, -8.0, 0, 4.0, 0, 0, 0]
    # a token still in flight (async scheduling) is part of the output already; 8 (the vocabulary) = none
    out = apply_penalties(logits, seqs, torch.tensor([5, 8]))
    assert out[0].tolist() == [0, 0, 0, -2.0, 0, -2.0, 0, 0]
    assert out[1].tolist() == [0, 2.0, -8.0, 0, 4.0, 0, 0, 0]


def test_presence_penalty_stops_repeats(llm):
    out = llm.generate([[1, 2, 3]], greedy(max_tokens=40, presence_penalty=2.0, frequency_penalty=2.0), use_tqdm=False)[
        0
    ]["tokens"]
    plain = llm.generate([[1, 2, 3]], greedy(max_tokens=40), use_tqdm=False)[0]["tokens"]
    assert len(set(plain)) < len(plain)  # the tiny model does repeat itself...
    assert len(set(out)) > len(set(plain))  # ...less so when penalised


def test_logprobs_match_transformers(llm, llama_path):
    from transformers import AutoModelForCausalLM

    prompt = [1, 2, 3, 4]
    out = llm.generate([prompt], greedy(max_tokens=6, logprobs=3), use_tqdm=False)[0]
    assert out["tokens"] == hf_greedy(llama_path, [prompt], 6)[0]
    model = AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([prompt + out["tokens"]])).logits[0].log_softmax(-1)
    for step, (token, (lp, top)) in enumerate(zip(out["tokens"], out["logprobs"])):
        row = ref[len(prompt) - 1 + step]
        assert lp == pytest.approx(row[token].item(), abs=1e-4)
        values, ids = row.topk(3)
        assert [t for t, _ in top] == ids.tolist()
        assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-4)
    assert llm.generate([prompt], greedy(max_tokens=2, logprobs=0), use_tqdm=False)[0]["logprobs"][0][1] == []


def test_n_completions_share_prompt_blocks(llm):
    engine = llm.engine
    prompt = list(range(10, 50))  # 40 tokens: 2 full blocks of 16 and a partial one
    seqs = engine.make_sequences(prompt, greedy(n=4, max_tokens=4))
    for seq in seqs:
        engine.add(seq)
    engine.step()
    assert engine.allocator.num_blocks - engine.allocator.num_free_blocks == 2 + 4  # not 4 * 3
    while engine.has_unfinished():
        engine.step()
    assert len({tuple(s.output_token_ids) for s in seqs}) == 1
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_n_seeded_completions(llm):
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=7, n=3)
    out = llm.generate([[4, 5, 6]], params, use_tqdm=False)[0]
    assert [o["index"] for o in out["outputs"]] == [0, 1, 2] and out["tokens"] == out["outputs"][0]["tokens"]
    for i, completion in enumerate(out["outputs"]):
        alone = llm.generate([[4, 5, 6]], params.model_copy(update={"n": 1, "seed": 7 + i}), use_tqdm=False)[0]
        assert completion["tokens"] == alone["tokens"]
    assert len({tuple(o["tokens"]) for o in out["outputs"]}) == 3


def test_stream_matches_generate(llm):
    prompts = ["The capital of France", "A paged KV cache", "héllo"]
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=20, ignore_eos=True, n=2)
    whole = llm.generate(prompts, params, use_tqdm=False)
    texts, tokens, finished = {}, {}, {}
    for s in llm.stream(prompts, params):
        key = (s["index"], s["completion"])
        assert not s["delta"].endswith("\ufffd") or s["finished"]  # no character split between deltas
        texts[key] = texts.get(key, "") + s["delta"]
        assert len(s["tokens"]) == len(tokens.get(key, [])) + 1
        tokens[key], finished[key] = s["tokens"], s["finish_reason"]
    for i, out in enumerate(whole):
        for j, comp in enumerate(out["outputs"]):
            assert (texts[i, j], tokens[i, j], finished[i, j]) == (comp["text"], comp["tokens"], "length")


def test_stream_closed_early_frees_blocks(llm):
    stream = llm.stream(["one", "two"], greedy(max_tokens=50))
    next(stream)
    stream.close()
    assert not llm.engine.has_unfinished()
    assert llm.engine.allocator.num_free_blocks == llm.engine.allocator.num_blocks


def test_chat_applies_the_template(llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The capital of France?"}]
    with pytest.raises(ValueError, match="no chat template"):
        llm.chat(messages, greedy())
    out = llm.chat(messages, greedy(max_tokens=8), chat_template=TEMPLATE, use_tqdm=False)[0]
    rendered = "<system>Be brief.\n<user>The capital of France?\n<assistant>"
    assert out["prompt"] == llm.tokenizer.encode(rendered, add_special_tokens=False)
    assert out["tokens"] == llm.generate([out["prompt"]], greedy(max_tokens=8), use_tqdm=False)[0]["tokens"]
    two = llm.chat([messages, messages[1:]], greedy(max_tokens=8), chat_template=TEMPLATE, use_tqdm=False)
    assert two[0]["tokens"] == out["tokens"] and len(two) == 2


def test_a_sampler_with_only_sample_gets_penalties_bans_and_logprobs_from_the_core(llama_path):
    """A third-party sampler that picks the argmax and knows nothing else: the core's penalties,
    min_tokens ban and logprobs make it behave exactly like greedy decoding with the default sampler."""
    from minivllm.core import plugins
    from minivllm.core.interfaces import Sampler

    class ArgmaxOnly(Sampler):
        def sample(self, logits, batch):
            return logits.argmax(dim=-1)

    plugins.load_plugins()
    plugins.samplers.register("argmax_only", ArgmaxOnly, source="test")
    try:
        settings = dict(kvcache_block_size=16, max_model_len=128)
        plain, default = LLM(llama_path, sampler="argmax_only", **settings), LLM(llama_path, **settings)
        eos = default.generate(PROMPT, greedy(max_tokens=6), use_tqdm=False)[0]["tokens"][2]
        for llm in (plain, default):
            llm.engine.eos_token_ids.add(eos)
        params = dict(max_tokens=12, repetition_penalty=1.5, frequency_penalty=0.3, logprobs=2, min_tokens=4)
        got = plain.generate(PROMPT, SamplingParams(temperature=1.0, **params), use_tqdm=False)[0]
        want = default.generate(PROMPT, SamplingParams(temperature=0.0, **params), use_tqdm=False)[0]
        assert got["tokens"] == want["tokens"] and got["logprobs"] == want["logprobs"]
        assert len(got["logprobs"]) == len(got["tokens"]) >= 4 and eos not in got["tokens"][:4]
        unpenalised = default.generate(PROMPT, greedy(max_tokens=12), use_tqdm=False)[0]["tokens"]
        assert got["tokens"] != unpenalised[: len(got["tokens"])]  # the penalties did change something
    finally:
        plugins.load_plugins(reload=True)
