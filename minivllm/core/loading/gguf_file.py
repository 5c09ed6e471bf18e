"""One pass over a GGUF file: the Hugging Face config, the tokenizer and the weights from a single parse.

transformers reads a GGUF three times when asked for its config, its tokenizer and its weights (and its
``gguf.GGUFReader`` turns every vocabulary entry into a numpy array on the way): about 15 s for the 135M
default model on a 2-core CPU. Here the header is parsed once into plain Python values, the file stays
memory-mapped, and the three products are built from that parse:

- the config with transformers' own GGUF key map (``GGUF_CONFIG_MAPPING``), as ``load_gguf_checkpoint`` does;
- the tokenizer with transformers' GGUF tokenizer converter;
- the weights one tensor at a time, dequantised a chunk of rows at a time by ``gguf.quants.dequantize``
  (the function transformers itself uses) straight into the target dtype, so the load never holds a second
  float32 copy of the model; or, with ``quantized=True``, the weights of matmuls and the embedding kept quantized
  (``core/quantized_weight.py``: the CPU's ``quantization="gguf"``).

Only the architectures whose tensor names and layout we know are read this way (:data:`ARCHITECTURES`);
:meth:`GGUFFile.supported` says so, and ``Checkpoint`` falls back to transformers for the others.
``tests/core/test_gguf_file.py`` holds the result equal to transformers' loader.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

import numpy as np
import torch

from minivllm.core import quantized_weight
from minivllm.core.quantized_weight import QuantizedWeight
from minivllm.core.utils import cdiv

ARCHITECTURES = ("llama", "qwen2", "qwen3")

# GGUF tensor names -> Hugging Face names, for ARCHITECTURES (llama.cpp's convert_hf_to_gguf.py, reversed)
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# metadata value types (GGUF spec): fixed-size scalars by struct format; 8 is a string, 9 an array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_FLOATS = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # ggml types stored as plain values
_CHUNK_ELEMENTS = 1 << 22  # rows dequantised at once: 16 MB of float32 scratch, whatever the tensor
# kept quantized with quantized=True: the linear layers, the embedding and the LM head
_QUANTIZABLE = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "token_embd", "output"}


class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> value) and ``tensors`` (GGUF name -> (torch shape, ggml
    type, absolute byte offset, byte count)); the tensor data is read only by :meth:`weights`."""

    def __init__(self, path: str):
        self.path = path
        self._blob = np.memmap(path, mode="r", dtype=np.uint8)  # pages are read as tensors are
        self.metadata, self.tensors = _parse(self._blob, path)
        self.architecture: str = self.metadata["general.architecture"]

    def __reduce__(self):
        return GGUFFile, (self.path,)  # tensor-parallel workers re-parse rather than pickle the mapping

    def supported(self) -> bool:
        """Whether this reader knows the architecture (llama.cpp stores Mistral as llama; transformers
        gives it its own config, so it goes there)."""
        name = str(self.metadata.get("general.name", "")).lower()
        return self.architecture in ARCHITECTURES and "mistral" not in name

    def hf_config(self):
        """The transformers config, built as ``load_gguf_checkpoint`` builds it from the same keys."""
        from transformers import AutoConfig
        from transformers.integrations import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

        config = dict(GGUF_CONFIG_DEFAULTS_MAPPING.get(self.architecture, {}))
        config["tie_word_embeddings"] = "output.weight" not in self.tensors
        for key, value in self.metadata.items():
            prefix, _, name = key.partition(".")
            renamed = GGUF_CONFIG_MAPPING.get(prefix, {}).get(name)
            if renamed is not None and renamed != -1:
                config[renamed] = value[0] if isinstance(value, list) and len(value) == 1 else value
        if self.architecture == "qwen3" and "qwen3.attention.key_length" in self.metadata:
            # Qwen3's head_dim is not hidden_size / heads; transformers' map leaves it at the class default
            config["head_dim"] = self.metadata["qwen3.attention.key_length"]
        if "vocab_size" not in config and "tokenizer.ggml.tokens" in self.metadata:
            config["vocab_size"] = len(self.metadata["tokenizer.ggml.tokens"])
        return AutoConfig.for_model(**config)

    def tokenizer(self):
        """The fast tokenizer transformers builds for this file (``AutoTokenizer(gguf_file=...)``)."""
        from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        # grouped as transformers' get_gguf_tokenizer groups them, from the metadata we already hold
        found = {
            group: {
                name: self.metadata[f"tokenizer.{key}"]
                for key, name in renames.items()
                if f"tokenizer.{key}" in self.metadata
            }
            for group, renames in GGUF_TOKENIZER_MAPPING.items()
        }
        tokenizer, tokenizer_config = found["tokenizer"], found["tokenizer_config"]
        if tokenizer.get("tokenizer_type") == "llama":
            tokenizer_config.setdefault("add_bos_token", True)  # sentencepiece files: llama.cpp's default
        for special, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ):
            token_id = self.metadata.get(f"tokenizer.ggml.{key}")
            tokenizer_config[special] = tokenizer["tokens"][token_id] if token_id is not None else None
        backend, extra = convert_gguf_tokenizer(self.architecture, tokenizer)
        return TokenizersBackend(tokenizer_object=backend, **tokenizer_config, **extra)

    def weights(
        self, dtype: torch.dtype = torch.float32, quantized: bool = False
    ) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
        """(Hugging Face name, tensor of ``dtype``) pairs, one tensor in memory at a time. Tensors that
        the Hugging Face model has no parameter for (llama3's ``rope_freqs``) are skipped, as transformers
        skips them. With ``quantized``, the weights of the linear layers, the embedding and the LM head of
        the types ``quantized_weight.py`` takes come as a ``QuantizedWeight`` instead."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        heads = self.metadata.get(f"{self.architecture}.attention.head_count")
        kv_heads = self.metadata.get(f"{self.architecture}.attention.head_count_kv", heads)
        for gguf_name, (shape, ggml_type, offset, nbytes) in self.tensors.items():
            hf_name = hf_tensor_name(gguf_name)
            if hf_name is None:
                continue
            rows, cols = int(np.prod(shape[:-1])), shape[-1]
            raw = self._blob[offset : offset + nbytes].reshape(rows, -1)  # [rows, bytes per row]
            kept = None
            if quantized and gguf_name.split(".")[-2] in _QUANTIZABLE:
                kept = quantized_weight.from_gguf(raw, ggml_type, cols)
            if kept is not None:
                if self.architecture == "llama" and hf_name.split(".")[-2] in ("q_proj", "k_proj"):
                    n = heads if "q_proj" in hf_name else kv_heads
                    kept = kept.map_rows(lambda t, n=n: _unpermute_rope(t, n))
                yield hf_name, kept
                continue
            out = torch.empty(rows, cols, dtype=dtype)
            step = max(1, _CHUNK_ELEMENTS // cols)
            for start in range(0, rows, step):
                chunk = raw[start : start + step]
                if ggml_type in _FLOATS:  # plain values: reinterpret the bytes (numpy has no bfloat16)
                    values = torch.from_numpy(chunk.copy()).view(_FLOATS[ggml_type])
                else:
                    values = torch.from_numpy(dequantize(chunk, GGMLQuantizationType(ggml_type)))
                out[start : start + step] = values
            if self.architecture == "llama" and hf_name.split(".")[-2] in ("q_proj", "k_proj"):
                out = _unpermute_rope(out, heads if "q_proj" in hf_name else kv_heads)
            yield hf_name, out.reshape(shape)


def hf_tensor_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for tensors without one."""
    if m := _LAYER_TENSOR.fullmatch(gguf_name):
        layer, part, kind = m.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}" if part in _LAYER_NAMES else None
    base, _, kind = gguf_name.rpartition(".")
    return f"{_GLOBAL_NAMES[base]}.{kind}" if base in _GLOBAL_NAMES else None


def _unpermute_rope(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of Q/K rows: it interleaves each head's two rotary halves (pairs of
    adjacent rows) for its rope kernel; Hugging Face keeps the halves apart (rotate_half). ``w`` is
    [rows, anything]: a weight, or a quantized weight's per-row scales."""
    rows, cols = w.shape
    # [heads, half, 2, cols] -> [heads, 2, half, cols]
    return w.reshape(num_heads, rows // num_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _parse(blob: np.ndarray, path: str) -> tuple[dict, dict]:
    """The metadata and the tensor table of a GGUF v2/v3 file (see the spec in ggml's docs/gguf.md)."""
    if bytes(blob[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        raise ValueError(f"{path} is GGUF version {version}; versions 2 and 3 are read")
    pos, metadata = 24, {}
    for _ in range(kv_count):
        key, pos = _string(blob, pos)
        (value_type,) = struct.unpack_from("<I", blob, pos)
        metadata[key], pos = _value(blob, pos + 4, value_type)
    table = []
    for _ in range(tensor_count):
        name, pos = _string(blob, pos)
        (ndim,) = struct.unpack_from("<I", blob, pos)
        dims = struct.unpack_from(f"<{ndim}Q", blob, pos + 4)
        ggml_type, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * ndim)
        pos += 4 + 8 * ndim + 12
        table.append((name, tuple(reversed(dims)), ggml_type, offset))  # ggml lists the fastest dim first
    alignment = metadata.get("general.alignment", 32)
    data_start = cdiv(pos, alignment) * alignment  # the data section starts at the next aligned offset
    tensors = {
        name: (shape, ggml_type, data_start + offset, _nbytes(shape, ggml_type))
        for name, shape, ggml_type, offset in table
    }
    return metadata, tensors


def _nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    """Bytes of a tensor: whole blocks of ``block`` values in ``block_bytes`` each (0 for a type the
    ``gguf`` package does not know; reading that tensor then fails in :meth:`GGUFFile.weights`)."""
    from gguf import GGML_QUANT_SIZES

    block, block_bytes = GGML_QUANT_SIZES.get(ggml_type, (1, 0))  # keyed by an IntEnum: a plain int finds it
    return int(np.prod(shape)) // block * block_bytes


def _value(blob: np.ndarray, pos: int, value_type: int):
    if value_type in _SCALARS:
        fmt = "<" + _SCALARS[value_type]
        return struct.unpack_from(fmt, blob, pos)[0], pos + struct.calcsize(fmt)
    if value_type == _STRING:
        return _string(blob, pos)
    if value_type == _ARRAY:
        item_type, count = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        if item_type in _SCALARS:  # token types and scores: one numpy read, not count struct calls
            dtype = np.dtype("<" + _SCALARS[item_type])
            values = np.frombuffer(blob, dtype, count, pos).tolist()
            return values, pos + count * dtype.itemsize
        values = []
        for _ in range(count):
            value, pos = _value(blob, pos, item_type)
            values.append(value)
        return values, pos
    raise ValueError(f"unknown GGUF metadata value type {value_type}")


def _string(blob: np.ndarray, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", blob, pos)
    return bytes(blob[pos + 8 : pos + 8 + length]).decode("utf-8"), pos + 8 + length
