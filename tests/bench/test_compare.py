"""End to end on a tiny model: `minivllm bench` runs two arms in their own processes, flags the arm whose
outputs are wrong, and writes the table, JSON and PNG that `compare()`'s result gives."""

import json
import os

import pytest

import minivllm.bench
from minivllm import cli
from minivllm.bench import ArmFailed
from minivllm.bench import runner as bench_runner
from minivllm.bench.plot import main as plot_main
from minivllm.bench.report import BenchResult
from minivllm.bench.stats import SAME
from minivllm.core import plugins
from tests.checkpoints import CORPUS


@pytest.fixture
def constant_sampler(plugin_site, monkeypatch):
    """The throwaway plugin's `constant` sampler (always token 7), here and in the arms' processes."""
    monkeypatch.setenv("MINIVLLM_PLUGINS", "test_plugin")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [plugin_site, os.environ.get("PYTHONPATH")])))
    plugins.load_plugins(reload=True)
    yield
    monkeypatch.undo()
    plugins.load_plugins(reload=True)


@pytest.fixture
def chat_file(tmp_path) -> str:
    """A file workload of text prompts behind one system prompt (prefix caching has blocks to reuse)."""
    path = tmp_path / "chat.jsonl"
    system = " ".join(CORPUS[:3])
    path.write_text("".join(json.dumps({"prompt": f"{system} {q}", "max_tokens": 8}) + "\n" for q in CORPUS[:6]))
    return f"file:{path}"


def test_bench_flags_a_wrong_arm_and_writes_table_json_and_png(
    llama_path, constant_sampler, chat_file, tmp_path, monkeypatch, capsys
):
    results = []

    def recording_compare(*args, **kwargs):
        results.append(compare(*args, **kwargs))
        return results[-1]

    compare = minivllm.bench.compare
    monkeypatch.setattr(minivllm.bench, "compare", recording_compare)
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    cli.main(
        [
            "bench",
            llama_path,
            "--workload",
            chat_file,
            "--ab",
            "sampler=default,constant",
            "--repeats",
            "2",
            "--set",
            "kvcache_block_size=16",
            "--set",
            "max_model_len=256",
            "--no-progress",
            "--json",
            str(json_path),
            "--plot",
            str(png_path),
        ]
    )
    (result,) = results
    table = capsys.readouterr().out
    assert table == result.table() + "\n"
    assert json_path.read_text() == result.to_json() + "\n"

    data = json.loads(json_path.read_text())
    assert {"workload", "num_prompts", "repeats", "device", "commit", "arms", "comparisons"} <= data.keys()
    assert (data["workload"], data["num_prompts"], data["repeats"], data["device"]) == (chat_file, 6, 2, "cpu")
    base, wrong = data["arms"]
    assert (base["name"], wrong["name"]) == ("sampler=default", "sampler=constant")
    assert wrong["config"] == {"kvcache_block_size": 16, "max_model_len": 256, "sampler": "constant"}
    for arm in data["arms"]:
        assert len(arm["output_tokens_per_s"]) == 2 and all(v > 0 for v in arm["output_tokens_per_s"])
        assert arm["median_output_tokens_per_s"] > 0 and arm["ttft_ms_p50"] > 0 and arm["tpot_ms_p50"] > 0
        assert arm["peak_memory_bytes"] > 2**20 and arm["kv_blocks"] > 0 and arm["preemptions"] == [0, 0]
        assert (arm["dtype"], arm["attention_backend"]) == ("float32", "cpu")
        assert len(arm["ttft_ms"]) == 2 * 6 and arm["ttft_ms_p50"] <= arm["ttft_ms_p90"]
    assert base["outputs_agree"] is True and base["agreement_rate"] == 1.0
    assert wrong["outputs_agree"] is False and wrong["agreement_rate"] < 0.2
    (comparison,) = data["comparisons"]
    assert (comparison["baseline"], comparison["arm"]) == ("sampler=default", "sampler=constant")
    assert comparison["outputs_agree"] is False
    assert comparison["ci95"][0] <= comparison["ratio"] <= comparison["ci95"][1]
    assert comparison["verdict"] in ("faster", "slower", SAME)

    wrong_row = next(line for line in table.splitlines() if line.startswith("sampler=constant "))
    assert "DISAGREE" in wrong_row
    assert "sampler=constant vs sampler=default: output tok/s x" in table
    assert "(outputs disagree: not a win)" in table
    png = png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    # a saved result reads back whole, and plots again without re-running
    assert BenchResult.from_dict(data).to_dict() == data
    plot_main(str(json_path), str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").read_bytes().startswith(b"\x89PNG")


def test_a_bad_request_fails_in_the_first_cross_check_before_any_timing(llama_path, tmp_path, monkeypatch):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": [1, 2, 3], "max_tokens": 4}\n{"prompt": [1, 99999], "max_tokens": 4}\n')
    modes = []
    run_arm = bench_runner.run_arm
    monkeypatch.setattr(bench_runner, "run_arm", lambda arm, mode, *a: modes.append(mode) or run_arm(arm, mode, *a))
    with pytest.raises(
        ArmFailed,
        match=r"(?s)arm sampler=default \(check run\) failed with exit code 1:.*"
        r"error: request 1 of the workload: token id 99999 is outside the vocabulary",
    ):
        minivllm.bench.compare(
            llama_path,
            arms=[{"sampler": "default"}, {"sampler": "fast"}],
            workload=f"file:{path}",
            settings={"kvcache_block_size": 16, "max_model_len": 256},
            progress=False,
        )
    assert modes == ["check"]
