"""Arms from --ab / --set: the cross product, typed values, and errors that name the bad key or value
before anything runs."""

import re

import pytest

from minivllm import cli
from minivllm.bench import runner as bench_runner
from minivllm.bench.arms import build_arms, parse_ab, parse_set


def test_cross_product_with_the_baseline_first():
    arms = parse_ab(["scheduler=fcfs,chunked", "enforce_eager=true,false"])
    assert arms == [
        {"scheduler": "fcfs", "enforce_eager": "true"},
        {"scheduler": "fcfs", "enforce_eager": "false"},
        {"scheduler": "chunked", "enforce_eager": "true"},
        {"scheduler": "chunked", "enforce_eager": "false"},
    ]
    assert parse_ab([]) == [{}]  # no --ab: one configuration


def test_arms_are_validated_and_typed(llama_path):
    arms = build_arms(
        llama_path,
        parse_ab(["kvcache_block_size=16,32", "enable_prefix_caching=true,false"]),
        parse_set(["max_model_len=256", "sampler=fast"]),
    )
    assert [a.name for a in arms] == [
        "kvcache_block_size=16,enable_prefix_caching=true",
        "kvcache_block_size=16,enable_prefix_caching=false",
        "kvcache_block_size=32,enable_prefix_caching=true",
        "kvcache_block_size=32,enable_prefix_caching=false",
    ]
    assert arms[1].overrides == {
        "max_model_len": 256,
        "sampler": "fast",
        "kvcache_block_size": 16,
        "enable_prefix_caching": False,
    }
    assert arms[3].config.kvcache_block_size == 32 and arms[3].config.max_model_len == 256
    assert [a.name for a in build_arms(llama_path, [{}])] == ["baseline"]


def test_an_arm_can_constrain_its_requests(llama_path):
    from minivllm.bench.arms import STRUCTURED_OUTPUTS
    from minivllm.core.sampling_params import StructuredOutputsParams

    arms = build_arms(llama_path, parse_ab(["structured_output=none,json"]), parse_set(["max_model_len=256"]))
    assert [(a.structured_output, a.overrides["structured_output"]) for a in arms] == [
        (None, "none"),
        (STRUCTURED_OUTPUTS["json"], "json"),
    ]
    assert arms[0].config == arms[1].config  # the same engine; only the requests differ
    for constraint in STRUCTURED_OUTPUTS.values():
        assert constraint is None or StructuredOutputsParams(**constraint)
    with pytest.raises(ValueError, match="structured_output 'yaml'; choose one of none, json, regex"):
        build_arms(llama_path, parse_ab(["structured_output=none,yaml"]))


@pytest.mark.parametrize(
    "ab, message",
    [
        (["sheduler=fcfs,chunked"], "unknown setting 'sheduler'; settings: .*scheduler"),
        (["scheduler=fcfs,fifo"], "arm scheduler=fifo: unknown scheduler 'fifo'; registered: chunked, fcfs"),
        (["kv_allocator=simple,prefix"], "unknown KV allocator 'prefix'; registered: prefix_cache, simple"),
        (["sampler=default,fastest"], "unknown sampler 'fastest'; registered: default, fast"),
        (["enforce_eager=true,maybe"], "arm enforce_eager=maybe: enforce_eager: Input should be a valid boolean"),
        (["kvcache_block_size=16,0"], "arm kvcache_block_size=0: kvcache_block_size: Input should be greater than"),
        (
            ["attention_backend=torch,cpu", "kvcache_block_size=16,24"],
            "arm attention_backend=torch,kvcache_block_size=24: "
            "kvcache_block_size=24 is not supported by the TorchAttentionBackend attention backend: "
            "it needs a multiple of 16",
        ),
        (["scheduler"], "--ab 'scheduler': expected KEY=VALUE"),
        (["scheduler=fcfs,"], "an empty value"),
        (["scheduler=fcfs", "scheduler=chunked"], "--ab scheduler is given twice"),
        (["enforce_eager=true,1"], "arms enforce_eager=true and enforce_eager=1 are the same configuration"),
        (["model=a,b"], "unknown setting 'model'"),
    ],
)
def test_bad_ab_fails_before_any_run_naming_it(llama_path, monkeypatch, ab, message):
    def no_run(*args, **kwargs):
        raise AssertionError("an arm ran")

    monkeypatch.setattr(bench_runner, "run_arm", no_run)
    argv = ["bench", llama_path]
    for text in ab:
        argv += ["--ab", text]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code.startswith("error: ")
    assert re.search(message, exc.value.code), exc.value.code


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "scheduler=chunked", "--ab", "scheduler=fcfs,chunked"], "'scheduler' is both compared and fixed"),
        (["--set", "max_model_len"], "--set 'max_model_len': expected KEY=VALUE"),
        (["--set", "device=tpu"], "arm baseline: device: Input should be 'auto', 'cpu' or 'cuda'"),
        (["--workload", "zipf"], "unknown workload 'zipf'"),
        (["--repeats", "0"], "repeats must be at least 1"),
        (["--top-p", "0"], "--top-p: Input should be greater than 0, not 0.0"),  # named by its flag
    ],
)
def test_bad_settings_fail_before_any_run(llama_path, monkeypatch, argv, message):
    monkeypatch.setattr(bench_runner, "run_arm", lambda *a, **k: pytest.fail("an arm ran"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", llama_path, *argv])
    assert message in exc.value.code


class _Stop(Exception):
    pass


def _stop(*args, **kwargs):
    raise _Stop


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--max-input-len", "64"], True),  # a 56-token shared prompt, 256-token blocks
        (["--max-input-len", "64", "--set", "kvcache_block_size=16"], False),
        ([], False),  # 1024 tokens: four blocks
    ],
)
def test_bench_says_when_the_shared_prefix_is_shorter_than_a_block(llama_path, monkeypatch, caplog, argv, said):
    monkeypatch.setattr(bench_runner, "run_arm", _stop)  # what is said comes before any run
    with pytest.raises(_Stop):
        cli.main(
            [
                "bench",
                llama_path,
                "--workload",
                "shared-prefix",
                "--ab",
                "kv_allocator=simple,prefix_cache",
                "--no-progress",
                *argv,
            ]
        )
    note = (
        "workload 'shared-prefix': the shared prompt is 56 tokens, shorter than one KV block (256 tokens), "
        "and the prefix cache shares only full blocks"
    )
    assert (note in caplog.text) == said, caplog.text


def test_a_missing_workload_file_is_an_error_not_a_traceback(llama_path, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_runner, "run_arm", _stop)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", llama_path, "--workload", f"file:{tmp_path}/nothere.jsonl"])
    assert exc.value.code == f"error: workload file '{tmp_path}/nothere.jsonl' does not exist"
