"""The commands check their sampling flags before they load the model: an empty folder as the model
would fail the load with another error, so seeing the flag's error proves the check came first."""

import pytest

from minivllm import LLM, EngineConfig, SamplingParams
from minivllm.cli import main


@pytest.mark.parametrize(
    "command, flags, error",
    [
        ("generate", ["--max-tokens", "-3"], "--max-tokens: Input should be greater than or equal to 1, not -3"),
        ("generate", ["--temperature", "-1"], "--temperature: Input should be greater than or equal to 0, not -1.0"),
        ("chat", ["--max-tokens", "0"], "--max-tokens: Input should be greater than or equal to 1, not 0"),
        ("bench", ["--top-p", "2"], "--top-p: Input should be less than or equal to 1, not 2.0"),
    ],
)
def test_bad_sampling_flags_fail_before_the_model_loads(tmp_path, command, flags, error):
    model = ["--model", str(tmp_path)] if command != "bench" else [str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main([command, "hi", *model, *flags] if command == "generate" else [command, *model, *flags])
    assert str(e.value) == f"error: {error}"


def test_an_empty_folder_does_fail_the_load(tmp_path):
    with pytest.raises(SystemExit, match="has no config.json and not exactly one .gguf file"):
        main(["generate", "hi", "--model", str(tmp_path)])


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "hi", "--model", "{path}"],
        ["chat", "{path}"],
        ["chat", "--model", "{path}"],
        ["serve", "{path}"],
        ["serve", "--model", "{path}"],
        ["serve", "{path}", "--model", "{path}"],
        ["bench", "{path}", "--ab", "sampler=default,fast"],
        ["bench", "--model", "{path}", "--ab", "sampler=default,fast"],
    ],
    ids=" ".join,
)
def test_every_command_takes_the_model_as_vllm_does(tmp_path, argv):
    """Positional or ``--model`` (generate's positional arguments are prompts): the load of the empty folder
    fails, so the model given is the one that reached the engine."""
    with pytest.raises(SystemExit, match="has no config.json and not exactly one .gguf file"):
        main([a.format(path=tmp_path) for a in argv])


def test_two_different_models_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="two models given: 'a' and --model 'b'"):
        main(["serve", "a", "--model", "b"])


def test_vllm_habits_are_accepted(tmp_path, caplog):
    """``-tp``, ``--dtype half`` and ``--trust-remote-code`` (a no-op, said so) parse, and reach the load."""
    with pytest.raises(SystemExit, match="has no config.json"):
        main(["generate", "hi", "--model", str(tmp_path), "-tp", "1", "--dtype", "half", "--trust-remote-code"])
    assert "--trust-remote-code has no effect" in caplog.text
    assert EngineConfig(model=str(tmp_path), dtype="half").dtype == "float16"
    assert EngineConfig(model=str(tmp_path), dtype="float").dtype == "float32"


def test_generate_takes_the_sampling_flags(llama_path, capsys):
    flags = ["--temperature", "1", "--top-p", "0.9", "--top-k", "5", "-n", "3", "--seed", "7", "--max-tokens", "6"]
    main(
        [
            "generate",
            "--no-chat",
            "Hello there",
            "--model",
            llama_path,
            "--dtype",
            "float32",
            "--num-kvcache-blocks",
            "16",
            *flags,
        ]
    )
    printed = capsys.readouterr().out
    params = SamplingParams(temperature=1, top_p=0.9, top_k=5, n=3, seed=7, max_tokens=6)
    with LLM(llama_path, dtype="float32", num_kvcache_blocks=16, max_num_seqs=3) as llm:
        outputs = llm.generate("Hello there", params, use_tqdm=False)[0]["outputs"]
    assert len({tuple(o["tokens"]) for o in outputs}) > 1  # three seeded samples, not one answer thrice
    assert printed == "".join(o["text"].strip() + "\n" for o in outputs)
    with pytest.raises(SystemExit, match="-n: Input should be greater than or equal to 1, not 0"):
        main(["generate", "hi", "--model", llama_path, "-n", "0"])


def test_max_model_len_above_the_model_is_refused(llama_path):
    with pytest.raises(
        SystemExit,
        match=r"error: max_model_len=100000 is more than the model's context "
        r"\(max_position_embeddings=\d+\)",
    ):
        main(["generate", "hi", "--model", llama_path, "--max-model-len", "100000"])
