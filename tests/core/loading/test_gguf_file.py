"""The one-pass GGUF reader against transformers' own GGUF loading, the reference: the same config,
tokenizer and weights, on the embedded SmolLM2 file (Q4_1/Q8_0, llama's permuted Q/K) and on tiny GGUF
files written here from the tiny checkpoints of every built-in architecture."""

import json
import os

import numpy as np
import pytest
import torch

from minivllm.core.loading.checkpoint import Checkpoint
from minivllm.core.loading.default_model import default_model
from minivllm.core.loading.gguf_file import GGUFFile

TEXTS = [
    "Hello world!",
    "  The capital of France is Paris.\n\n\u00dcmlaut \u6771\u4eac \U0001f916",
    "<|im_start|>user\nhi<|im_end|>",
]


def reference(path: str) -> dict:
    """transformers' reading of a GGUF file: config, tokenizer and dequantised weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = os.path.split(path)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    return {"config": config, "tokenizer": AutoTokenizer.from_pretrained(folder, gguf_file=name), "tensors": tensors}


def assert_same_config(ours, theirs, differ=()) -> None:
    a, b = ours.to_dict(), theirs.to_dict()
    for key in ("_name_or_path", *differ):  # transformers names the folder it was asked for
        a.pop(key, None), b.pop(key, None)
    assert a == b


def assert_same_weights(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == torch.float32 and torch.equal(ours[name], tensor), name


@pytest.fixture(scope="module")
def smollm2():
    return default_model(), reference(default_model())


def test_smollm2_config_and_weights_equal_transformers(smollm2):
    path, ref = smollm2
    gguf = GGUFFile(path)
    assert gguf.supported() and gguf.architecture == "llama"
    assert_same_config(gguf.hf_config(), ref["config"])
    assert_same_weights(dict(gguf.weights()), ref["tensors"])


def test_smollm2_tokenizer_equals_transformers(smollm2):
    path, ref = smollm2
    ours, theirs = GGUFFile(path).tokenizer(), ref["tokenizer"]
    assert type(ours) is type(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert ours.chat_template == theirs.chat_template and ours.chat_template
    for text in TEXTS:
        ids = theirs.encode(text)
        assert ours.encode(text) == ids and ours.decode(ids) == theirs.decode(ids)


def test_weights_in_the_model_dtype_are_the_float32_ones_cast(smollm2):
    path, ref = smollm2
    for name, tensor in GGUFFile(path).weights(torch.bfloat16):
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, ref["tensors"][name].to(torch.bfloat16))


def test_checkpoint_reads_a_known_gguf_once():
    ckpt = Checkpoint.open(default_model())
    assert ckpt.load_format == "gguf" and ckpt.gguf is not None and ckpt.architecture == "LlamaForCausalLM"


# --- tiny GGUF files, written as llama.cpp's converter writes them -----------------------------------


def write_gguf(checkpoint: str, arch: str, path: str, qtype: str = "F32") -> str:
    """The tiny checkpoint as a GGUF: llama.cpp's metadata keys, gguf-py's tensor names, llama's Q/K rows
    permuted for its rope kernel, weights stored as ``qtype`` (norms stay float32, as llama.cpp keeps them)."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    with open(os.path.join(checkpoint, "tokenizer.json")) as f:
        model = json.load(f)["model"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(model["vocab"], key=model["vocab"].get))
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    writer.add_eos_token_id(model["vocab"]["<eos>"])
    names = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), config.num_hidden_layers
    )
    for name, tensor in load_file(os.path.join(checkpoint, "model.safetensors")).items():
        base, suffix = name.rsplit(".", 1)
        w = tensor.float().numpy()
        if arch == "llama" and base.endswith(("q_proj", "k_proj")):  # llama.cpp's convert_hf_to_gguf permute
            heads = config.num_attention_heads if "q_proj" in base else config.num_key_value_heads
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        quantized = qtype != "F32" and w.ndim == 2
        raw_type = gguf.GGMLQuantizationType[qtype if quantized else "F32"]
        data = gguf.quants.quantize(w, raw_type) if quantized else np.ascontiguousarray(w)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", data, raw_dtype=raw_type)  # shape from the bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_gguf_equals_transformers_and_the_checkpoint(checkpoints, tmp_path, arch, qtype):
    from safetensors.torch import load_file

    path = write_gguf(checkpoints[arch], arch, str(tmp_path / f"{arch}.gguf"), qtype)
    gguf, ref = GGUFFile(path), reference(path)
    assert gguf.supported()
    config = gguf.hf_config()
    # transformers leaves Qwen3's head_dim (attention.key_length) at the class default; we read it
    assert_same_config(config, ref["config"], differ=("head_dim",) if arch == "qwen3" else ())
    ours = dict(gguf.weights())
    assert_same_weights(ours, ref["tensors"])
    original = load_file(os.path.join(checkpoints[arch], "model.safetensors"))
    assert ours.keys() == original.keys()
    if qtype == "F32":  # the round trip is exact: names, the Q/K permutation undone, shapes
        assert all(torch.equal(ours[name], tensor) for name, tensor in original.items())
    if arch == "qwen3":
        from transformers import AutoConfig

        assert config.head_dim == AutoConfig.from_pretrained(checkpoints[arch]).head_dim == 32
