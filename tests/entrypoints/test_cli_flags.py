"""The commands check their sampling flags before they load the model: an empty folder as the model
would fail the load with another error, so seeing the flag's error proves the check came first."""

import pytest

from minivllm.cli import main


@pytest.mark.parametrize("command, flags, error", [
    ("generate", ["--max-tokens", "-3"], "--max-tokens: Input should be greater than or equal to 1, not -3"),
    ("generate", ["--temperature", "-1"], "--temperature: Input should be greater than or equal to 0, not -1.0"),
    ("chat", ["--max-tokens", "0"], "--max-tokens: Input should be greater than or equal to 1, not 0"),
    ("bench", ["--top-p", "2"], "--top-p: Input should be less than or equal to 1, not 2.0"),
])
def test_bad_sampling_flags_fail_before_the_model_loads(tmp_path, command, flags, error):
    model = ["--model", str(tmp_path)] if command != "bench" else [str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main([command, "hi", *model, *flags] if command == "generate" else [command, *model, *flags])
    assert str(e.value) == f"error: {error}"


def test_an_empty_folder_does_fail_the_load(tmp_path):
    with pytest.raises(SystemExit, match="has no config.json and not exactly one .gguf file"):
        main(["generate", "hi", "--model", str(tmp_path)])
