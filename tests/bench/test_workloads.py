"""Workloads: seeded and reproducible, lengths in their ranges and under the caps, JSONL files checked."""

import json

import pytest

from minivllm.bench.workloads import WORKLOADS, make_workload


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_synthetic_workloads_are_seeded_and_in_range(name):
    spec = WORKLOADS[name]
    a = make_workload(name, 20, vocab_size=512, seed=3)
    assert a == make_workload(name, 20, vocab_size=512, seed=3)
    assert a != make_workload(name, 20, vocab_size=512, seed=4)
    assert len(a) == 20
    for r in a:
        assert spec.prefix_len + spec.input_range[0] <= len(r.prompt) <= spec.prefix_len + spec.input_range[1]
        assert spec.output_range[0] <= r.max_tokens <= spec.output_range[1]
        assert all(0 <= t < 512 for t in r.prompt)


def test_default_size_is_nano_vllms():
    assert len(make_workload("decode-heavy")) == 256


def test_caps_scale_the_ranges_down():
    reqs = make_workload("random", 200, max_input_len=64, max_output_len=16)
    assert 6 <= min(len(r.prompt) for r in reqs) and max(len(r.prompt) for r in reqs) <= 64
    assert max(len(r.prompt) for r in reqs) > 40  # scaled, not clipped to a spike at the cap
    assert 1 <= min(r.max_tokens for r in reqs) and max(r.max_tokens for r in reqs) <= 16


def test_shared_prefix_requests_share_one_system_prompt():
    reqs = make_workload("shared-prefix", 10, max_input_len=(1024 + 128) // 8)
    prefix = reqs[0].prompt[:128]
    assert all(r.prompt[:128] == prefix for r in reqs)
    assert len({tuple(r.prompt[128:]) for r in reqs}) == 10


def test_file_workload_reads_text_and_token_prompts(tmp_path):
    path = tmp_path / "w.jsonl"
    rows = [
        {"prompt": "hello there", "max_tokens": 5},
        {"prompt": [1, 2, 3], "max_tokens": 50},
        {"prompt": "x", "max_tokens": 2},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    reqs = make_workload(f"file:{path}", max_output_len=10)
    assert [(r.prompt, r.max_tokens) for r in reqs] == [("hello there", 5), ([1, 2, 3], 10), ("x", 2)]
    assert len(make_workload(f"file:{path}", 2)) == 2
    with pytest.raises(ValueError, match="holds 3 requests, fewer than num_prompts=4"):
        make_workload(f"file:{path}", 4)


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"prompt": "hi"}', "expected"),
        ("not json", "expected"),
        ('{"prompt": "", "max_tokens": 3}', "non-empty text or a list of token ids"),
        ('{"prompt": [1, "a"], "max_tokens": 3}', "non-empty text or a list of token ids"),
        ('{"prompt": "hi", "max_tokens": 0}', "max_tokens must be a positive integer"),
    ],
)
def test_bad_file_lines_are_named(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "max_tokens": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{problem}"):
        make_workload(f"file:{path}")


def test_unknown_workload_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown workload 'randm'; choose one of random, shared-prefix"):
        make_workload("randm")
