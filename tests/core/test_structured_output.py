"""Structured output in the core: every constraint kind holds with every built-in sampler in both step
pipelines (on a tiny random model, whose unconstrained text is noise), with n > 1, seeds, preemption and
prefix caching; a constrained request changes nothing for the requests batched with it; a bad grammar is
refused alone, before any work."""

import json
import re

import jsonschema
import pytest

from minivllm import LLM, SamplingParams
from minivllm.core.sampling_params import StructuredOutputsParams
from tests.checkpoints import random_prompts

PROMPTS = random_prompts(4, 5, 30, seed=7)
SETTINGS = dict(kvcache_block_size=16, max_model_len=512)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "bc"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
CHOICES = ["yes", "no", "maybe not"]


def _valid_json(text: str) -> bool:
    jsonschema.validate(json.loads(text), SCHEMA)
    return True


# kind -> (the constraint, a check of a completed output)
KINDS = {
    "json": (StructuredOutputsParams(json=SCHEMA), _valid_json),
    "json_object": (StructuredOutputsParams(json_object=True), lambda t: isinstance(json.loads(t), dict)),
    "regex": (StructuredOutputsParams(regex=r"[0-9]{3}-[a-c]{2,4}"), lambda t: re.fullmatch(r"[0-9]{3}-[a-c]{2,4}", t)),
    "choice": (StructuredOutputsParams(choice=CHOICES), lambda t: t in CHOICES),
    "grammar (lark)": (
        StructuredOutputsParams(grammar='start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,2}/'),
        lambda t: re.fullmatch(r"\([0-9]{1,2}(,[0-9]{1,2})*\)", t),
    ),
    "grammar (gbnf)": (
        StructuredOutputsParams(grammar='root ::= "x" [a-b]+ "!"'),
        lambda t: re.fullmatch(r"x[ab]+!", t),
    ),
}


def _params(spec, **kw) -> SamplingParams:
    # ignore_eos: the tiny checkpoint's config names token 2 ('"') EOS as well as <eos>; the engine would stop
    # on every quote. The grammar's EOS is <eos> alone (a special token), and completing the grammar stops.
    return SamplingParams(
        **{"temperature": 1.0, "max_tokens": 120, "seed": 11, "ignore_eos": True, "structured_outputs": spec, **kw}
    )


def _check_outputs(results, check) -> None:
    completions = [o for r in results for o in r["outputs"]]
    assert all(o["finish_reason"] in ("stop", "length") for o in completions)
    done = [o for o in completions if o["finish_reason"] == "stop"]
    assert len(done) >= len(completions) // 2, [o["text"] for o in completions]  # most complete within max_tokens
    for o in done:
        assert check(o["text"]), o["text"]
    for o in completions:  # a cut output is still a prefix the grammar allows: no stray characters
        assert "<eos>" not in o["text"]


@pytest.mark.parametrize("sampler", ["default", "fast", "fused"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_holds_with_every_sampler_in_both_pipelines(llama_path, async_scheduling, sampler, kind):
    spec, check = KINDS[kind]
    llm = LLM(llama_path, sampler=sampler, async_scheduling=async_scheduling, **SETTINGS)
    results = llm.generate(PROMPTS, _params(spec, n=2), use_tqdm=False)
    _check_outputs(results, check)
    assert not llm.engine.has_unfinished()
    assert llm.engine.allocator.num_free_blocks == llm.engine.allocator.num_blocks


def test_both_pipelines_give_the_same_seeded_outputs(llama_path):
    params = [_params(KINDS[k][0], n=2) for k in ("json", "regex", "choice", "grammar (lark)")]
    runs = [
        LLM(llama_path, async_scheduling=a, **SETTINGS).generate(PROMPTS, params, use_tqdm=False) for a in (False, True)
    ]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "engine", [dict(num_kvcache_blocks=12), dict(enable_prefix_caching=False)], ids=["preemption", "no prefix caching"]
)
def test_preemption_and_prefix_caching_keep_the_grammar_state(llama_path, async_scheduling, engine):
    """Recompute-preemption (12 blocks of 16 tokens cannot hold 8 sequences of up to 150 tokens) and a run
    without the prefix cache give the seeded outputs of the roomy, caching run."""
    params = _params(KINDS["json"][0], n=2)
    reference = LLM(llama_path, async_scheduling=async_scheduling, **SETTINGS).generate(PROMPTS, params, use_tqdm=False)
    llm = LLM(llama_path, async_scheduling=async_scheduling, **SETTINGS, **engine)
    results = llm.generate(PROMPTS, params, use_tqdm=False)
    if "num_kvcache_blocks" in engine:
        assert llm.engine.scheduler.num_preemptions > 0
    assert results == reference
    _check_outputs(results, _valid_json)


def test_a_constrained_request_leaves_its_neighbours_unchanged(llama_path, async_scheduling):
    llm = LLM(llama_path, async_scheduling=async_scheduling, **SETTINGS)
    plain = [SamplingParams(temperature=0.0, max_tokens=20), SamplingParams(temperature=1.0, seed=4, max_tokens=20)]
    alone = llm.generate(PROMPTS[:2], plain, use_tqdm=False)
    mixed = llm.generate(PROMPTS[:3], plain + [_params(KINDS["choice"][0])], use_tqdm=False)
    assert mixed[:2] == alone
    assert mixed[2]["text"] in CHOICES


def test_eos_cannot_end_what_the_grammar_has_not_finished(llama_path):
    """The tiny model samples <eos> often; the grammar forbids it until its five characters are out."""
    llm = LLM(llama_path, **SETTINGS)
    params = _params(StructuredOutputsParams(regex="[a-z]{5}"), n=4, ignore_eos=False)
    results = llm.generate(PROMPTS, params, use_tqdm=False)
    assert all(
        re.fullmatch("[a-z]{5}", o["text"]) and o["finish_reason"] == "stop" for r in results for o in r["outputs"]
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(json={"type": "object", "properties": {"a": {"type": "nonsense"}}}), "invalid json"),
        (dict(regex="(unclosed"), "invalid regex"),
        (dict(grammar="start: undefined_rule"), "invalid grammar"),
    ],
)
def test_a_bad_grammar_is_refused_before_any_work(llama_path, spec, message):
    llm = LLM(llama_path, **SETTINGS)
    with pytest.raises(ValueError, match=f"prompt 1: {message}"):
        llm.generate(PROMPTS[:2], [SamplingParams(), _params(StructuredOutputsParams(**spec))], use_tqdm=False)
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize("spec", [dict(regex="a", choice=["b"]), dict(), dict(choice=[]), dict(json="{nope")])
def test_structured_outputs_params_are_validated(spec):
    with pytest.raises(ValueError):
        SamplingParams(structured_outputs=spec)


def test_a_grammar_that_completes_while_its_next_step_is_queued_is_left_finished(llama_path):
    """With async scheduling a constrained row's next step is queued before its newest token is collected (for
    the mask). Here that token completes the grammar, so the sequence is finished before the queued step's
    bookkeeping runs: that leaves it as it is (nothing pending, no tokens counted as computed), it ends by its
    grammar, and every block comes back."""
    engine = LLM(llama_path, async_scheduling=True, **SETTINGS).engine
    params = _params(StructuredOutputsParams(choice=["a"]), max_tokens=2)
    seqs = [engine.make_sequence(prompt, params, detokenize=True) for prompt in PROMPTS]
    for seq in seqs:
        engine.add(seq)
    while engine.has_unfinished():
        engine.step()
    assert [(seq.finish_reason, seq.num_pending_tokens) for seq in seqs] == [("stop", 0)] * len(seqs)
    assert all(seq.num_computed_tokens < len(seq.token_ids) for seq in seqs)
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_the_step_in_flight_is_collected_once_the_next_forward_is_queued(llama_path, monkeypatch):
    """Async scheduling keeps its overlap with a constrained row: the grammar's mask needs the row's newest
    token, so the step in flight is collected for it, but only after the next step's forward pass is queued."""
    llm = LLM(llama_path, async_scheduling=True, **SETTINGS)
    engine, model, events = llm.engine, llm.engine.executor.runner.model, []
    compute_logits, collect = model.compute_logits, engine._collect
    monkeypatch.setattr(model, "compute_logits", lambda hidden: events.append("forward") or compute_logits(hidden))
    monkeypatch.setattr(engine, "_collect", lambda submitted: events.append("collect") or collect(submitted))
    llm.generate(PROMPTS[:1], _params(KINDS["json"][0], max_tokens=12), use_tqdm=False)
    forwards_before = [events[:i].count("forward") for i, event in enumerate(events) if event == "collect"]
    assert len(forwards_before) == 12
    assert forwards_before == [k + 2 for k in range(11)] + [12]  # step k's tokens wait for step k + 1's forward


def test_two_ranks_give_one_rank_s_constrained_outputs(llama_path):
    """Under tensor parallelism rank 0 makes the mask once its forward pass is queued and sends it to the
    other rank, which waits for it in its own step: both sample alike, and the outputs are one rank's."""
    params = [_params(KINDS[k][0], temperature=0.0) for k in ("json", "choice", "regex")]
    settings = dict(SETTINGS, async_scheduling=True, dtype="float32")
    one = LLM(llama_path, **settings).generate(PROMPTS[:3], params, use_tqdm=False)
    with LLM(llama_path, tensor_parallel_size=2, **settings) as two:
        assert two.generate(PROMPTS[:3], params, use_tqdm=False) == one
    _check_outputs(one[:1], _valid_json)
