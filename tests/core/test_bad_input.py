"""Bad input gets a clear error naming the problem, before any work starts; the engine keeps serving."""

import json
import os
import shutil

import pytest
from pydantic import ValidationError

from minivllm import LLM, EngineConfig, SamplingParams


@pytest.fixture(scope="module")
def llm(llama_path):
    return LLM(llama_path, kvcache_block_size=16, max_model_len=128, num_kvcache_blocks=6)


def test_missing_model_path():
    with pytest.raises(ValidationError, match="model path '/nonexistent/model' does not exist"):
        EngineConfig(model="/nonexistent/model")


def test_unsupported_architecture_lists_the_supported(llama_path, tmp_path):
    path = tmp_path / "gpt2"
    shutil.copytree(llama_path, path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match="unsupported architecture 'GPT2LMHeadModel'; supported: "
        "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM",
    ):
        LLM(str(path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"kvcache_block_size": 24, "attention_backend": "torch"},
            "kvcache_block_size=24 is not supported by the "
            "TorchAttentionBackend attention backend: it needs a multiple of 16",
        ),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization\n  Input should be greater than 0"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization\n  Input should be less than or equal to 1"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size\n  Input should be greater than or equal to 1"),
        ({"tensor_parallel_size": 9}, "tensor_parallel_size\n  Input should be less than or equal to 8"),
        ({"num_kvcache_blocks": 0}, "num_kvcache_blocks must be -1"),
        ({"scheduler": "lifo"}, "unknown scheduler 'lifo'; registered: "),
        ({"max_num_seq": 4}, "max_num_seq\n  Extra inputs are not permitted"),
    ],
)
def test_bad_engine_settings(llama_path, kwargs, message):
    with pytest.raises(ValidationError, match=message.replace("(", "\\(").replace(")", "\\)")):
        EngineConfig(model=llama_path, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"presence_penalty": float("nan")}, "presence_penalty"),
        ({"seed": 2**64}, "seed"),
        ({"repetition_penalty": 1e-40}, "repetition_penalty"),
    ],
)
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "prompt 1: the prompt is empty"),
        ("", "prompt 1: the prompt is empty"),
        ([5, 600], r"prompt 1: token id 600 is outside the vocabulary \[0, 512\)"),
        ([5, -1], r"prompt 1: token id -1 is outside the vocabulary"),
        ([3] * 128, "prompt 1: prompt of 128 tokens is too long: max_model_len=128"),
        ([3] * 10, "prompt 1: the request needs up to 128 tokens \\(8 KV blocks of 16\\) but the KV cache has only"),
    ],
)
def test_bad_request_in_a_batch_is_rejected_before_any_work(llm, prompt, message):
    good = [1, 2, 3, 4]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    # the last case is a request that could never fit the 6-block cache
    bad_params = SamplingParams(max_tokens=200) if len(prompt) == 10 else params
    with pytest.raises(ValueError, match=message):
        llm.generate([good, prompt], [params, bad_params], use_tqdm=False)
    assert not llm.engine.has_unfinished()
    assert llm.engine.allocator.num_free_blocks == 6
    first = llm.generate([good], params, use_tqdm=False)[0]
    assert len(first["tokens"]) == 8 and first["finish_reason"] == "length" and first["finished"]


def test_bad_stop_token_id_is_rejected_and_huge_top_k_keeps_everything(llm):
    prompt = [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"prompt 0: stop token id 1000000000000 is outside the vocabulary \[0, 512\)"):
        llm.generate([prompt], SamplingParams(stop_token_ids=[10**12], min_tokens=2), use_tqdm=False)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    expected = llm.generate([prompt], greedy, use_tqdm=False)[0]["tokens"]
    huge = greedy.model_copy(update={"top_k": 2**70, "temperature": 1e-6})
    assert llm.generate([prompt], huge, use_tqdm=False)[0]["tokens"] == expected
    assert llm.engine.allocator.num_free_blocks == 6


def test_prompt_type_and_params_count_are_checked(llm):
    with pytest.raises(ValueError, match="prompt 0: a prompt must be a string or a list of token ids, got float"):
        llm.generate([1.5], use_tqdm=False)
    with pytest.raises(ValueError, match="prompt 1: a prompt must be a string or a list of token ids, got dict"):
        list(llm.stream(["hi", {"text": "hi"}]))
    with pytest.raises(ValueError, match="prompt 0: a prompt must be a string or a list of token ids, got int"):
        llm.generate(123, use_tqdm=False)
    with pytest.raises(ValueError, match="got 2 sampling params for 1 prompts"):
        llm.generate(["hi"], [SamplingParams(), SamplingParams()], use_tqdm=False)


@pytest.mark.parametrize(
    ("prompt", "got"),
    [
        (b"hello", "got bytes"),
        ([True, False], "got a list holding bool"),
        ([1, True], "got a list holding bool"),
        (bytearray(b"hi"), "got bytearray"),
    ],
)
def test_bytes_and_bools_are_no_token_ids(llm, prompt, got):
    with pytest.raises(ValueError, match=f"prompt 0: a prompt must be a string or a list of token ids, {got}"):
        llm.generate(prompt, use_tqdm=False)
    with pytest.raises(ValueError, match=f"prompt 1: a prompt must be a string or a list of token ids, {got}"):
        llm.generate([[1, 2], prompt], use_tqdm=False)


@pytest.mark.parametrize("temperature", [1e-39, 1e-38, 1e-6])
def test_a_temperature_too_small_to_divide_by_is_greedy(llm, temperature):
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    expected = llm.generate([1, 2, 3], greedy, use_tqdm=False)[0]["tokens"]
    tiny = SamplingParams(temperature=temperature, max_tokens=6, ignore_eos=True, top_p=0.5, top_k=3)
    assert tiny.greedy
    assert llm.generate([1, 2, 3], tiny, use_tqdm=False)[0]["tokens"] == expected


def test_seeds_count_all_64_bits(llm):
    def tokens(seed):
        params = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True, seed=seed)
        return llm.generate([1, 2, 3], params, use_tqdm=False)[0]["tokens"]

    assert tokens(5) == tokens(5)
    assert tokens(5) != tokens(5 + 2**32)
    assert tokens(-(2**63)) != tokens(2**62)
    # n completions of the largest seed take seeds 2**63 - 1, then -2**63: still a signed 64-bit seed
    params = SamplingParams(temperature=1.0, max_tokens=4, ignore_eos=True, seed=2**63 - 1, n=2)
    assert len(llm.generate([1, 2, 3], params, use_tqdm=False)[0]["outputs"]) == 2


@pytest.mark.parametrize(
    ("update", "field"), [({"temperature": -1}, "temperature"), ({"n": 0}, "n"), ({"min_tokens": 100}, "min_tokens")]
)
def test_model_copy_validates_the_update(update, field):
    with pytest.raises(ValidationError, match=field):
        SamplingParams().model_copy(update=update)
    assert SamplingParams().model_copy(update={"n": 3}).n == 3


def test_max_model_len_above_the_models_context_is_refused(llama_path):
    limit = json.loads(open(os.path.join(llama_path, "config.json")).read())["max_position_embeddings"]
    with pytest.raises(
        ValueError,
        match=f"max_model_len={limit + 1} is more than the model's context "
        rf"\(max_position_embeddings={limit}\)",
    ):
        LLM(llama_path, max_model_len=limit + 1, num_kvcache_blocks=4)
    with LLM(llama_path, num_kvcache_blocks=4) as llm:  # the default (4096) is capped, as before
        assert llm.engine.max_model_len == min(limit, 4096)


def test_gguf_or_config_is_required(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="has no config.json and not exactly one .gguf file"):
        LLM(str(tmp_path / "empty"))
