"""Open a local checkpoint: its Hugging Face config, tokenizer and weights (safetensors, GGUF or dummy).

A GGUF file of an architecture :mod:`minivllm.core.loading.gguf_file` knows is parsed once for all three; other
GGUF files go through transformers, which parses the file for each. A safetensors checkpoint may come with
fp8 weights (compressed-tensors: see compressed_tensors.py).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from minivllm.core.loading import compressed_tensors
from minivllm.core.loading.gguf_file import GGUFFile
from minivllm.core.loading.model_source import resolve_model


@dataclass
class Checkpoint:
    path: str  # the checkpoint directory
    gguf_file: str | None  # file name inside ``path`` for GGUF checkpoints
    load_format: str  # "safetensors", "gguf" or "dummy"
    hf_config: object
    gguf: GGUFFile | None = None  # the parsed file, when this package reads it (see gguf_file.py)
    fp8: bool = False  # whether the linears' weights come in fp8 (see compressed_tensors.py)

    @classmethod
    def open(cls, model: str, revision: str | None = None, load_format: str = "auto") -> Checkpoint:
        """Find ``model`` (a directory, a .gguf file or a hub id at ``revision``) and read its config;
        ``load_format`` is "auto", or the format the caller expects ("safetensors", "gguf", "dummy")."""
        from transformers import AutoConfig

        wanted = load_format
        path, gguf_file = resolve_model(model, revision), None
        if os.path.isfile(path):
            if not path.endswith(".gguf"):
                raise ValueError(f"model {path!r} is a file but not a .gguf file")
            path, gguf_file = os.path.split(os.path.abspath(path))
        elif not os.path.exists(os.path.join(path, "config.json")):
            ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
            if len(ggufs) != 1:
                raise ValueError(f"model directory {path!r} has no config.json and not exactly one .gguf file")
            gguf_file = os.path.basename(ggufs[0])
        if wanted == "dummy":
            load_format = "dummy"
        elif gguf_file:
            load_format = "gguf"
        else:
            load_format = "safetensors"
            if not glob.glob(os.path.join(path, "*.safetensors")):
                raise ValueError(
                    f"model directory {path!r} has no *.safetensors files (use load_format='dummy' for random weights)"
                )
        if wanted not in ("auto", load_format):
            raise ValueError(f"load_format={wanted!r} does not match the checkpoint ({load_format})")
        gguf = GGUFFile(os.path.join(path, gguf_file)) if gguf_file else None
        if gguf is not None and gguf.supported():
            return cls(path, gguf_file, load_format, gguf.hf_config(), gguf)
        hf_config = AutoConfig.from_pretrained(path, gguf_file=gguf_file)
        return cls(path, gguf_file, load_format, hf_config, fp8=compressed_tensors.fp8_scheme(hf_config))

    @property
    def architecture(self) -> str:
        archs = getattr(self.hf_config, "architectures", None)
        if archs:
            return archs[0]
        # GGUF configs name only the model type; take transformers' causal-LM class for it
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(self.hf_config.model_type)
        if arch is None:
            raise ValueError(f"the checkpoint config in {self.path!r} names no architecture")
        return arch

    @property
    def dtype(self) -> torch.dtype:
        dtype = getattr(self.hf_config, "dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        return dtype or torch.float32

    def load_tokenizer(self, tokenizer_path: str | None = None):
        """The tokenizer; None for a dummy checkpoint without tokenizer files (prompts must be token ids)."""
        from transformers import AutoTokenizer

        if tokenizer_path:
            return AutoTokenizer.from_pretrained(tokenizer_path)
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        if self.load_format == "dummy" and not any(os.path.exists(os.path.join(self.path, f)) for f in tokenizer_files):
            return None
        if self.gguf is not None:
            return self.gguf.tokenizer()
        return AutoTokenizer.from_pretrained(self.path, gguf_file=self.gguf_file)

    def eos_token_ids(self, tokenizer) -> set[int]:
        ids = set()
        for source in (self.hf_config, self._generation_config()):
            eos = getattr(source, "eos_token_id", None)
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        return ids

    def _generation_config(self):
        from transformers import GenerationConfig

        try:
            return GenerationConfig.from_pretrained(self.path)
        except OSError:
            return None

    def weights(
        self, dtype: torch.dtype = torch.float32, quantization: str = "none"
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor) pairs, one tensor at a time: for GGUF files read here of ``dtype``, the
        linears' weights kept quantized with ``quantization="gguf"`` (see ``GGUFFile.weights``); an fp8
        checkpoint's weights kept in fp8 with ``quantization="fp8"``, else dequantised to ``dtype``."""
        if self.load_format == "safetensors":
            from safetensors import safe_open

            with ExitStack() as files:
                where = {
                    name: f
                    for file in sorted(glob.glob(os.path.join(self.path, "*.safetensors")))
                    for f in [files.enter_context(safe_open(file, framework="pt"))]
                    for name in f.keys()
                }
                names = list(where)
                if self.fp8:  # a weight and its scale may sit in different files
                    yield from compressed_tensors.fp8_weights(
                        names, lambda n: where[n].get_tensor(n), quantization == "fp8", dtype
                    )
                else:
                    for name in names:
                        yield name, where[name].get_tensor(name)
        elif self.gguf is not None:
            yield from self.gguf.weights(dtype, quantization == "gguf")
        elif self.load_format == "gguf":
            yield from self._gguf_weights().items()
        else:
            raise ValueError("dummy checkpoints have no weights to read")

    def _gguf_weights(self) -> dict[str, torch.Tensor]:
        # transformers dequantises GGUF tensors and maps them to its own names; it needs a model
        # skeleton for the name map, which costs nothing on the meta device
        from transformers import AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(self.hf_config)
        parsed = load_gguf_checkpoint(
            os.path.join(self.path, self.gguf_file), return_tensors=True, model_to_load=skeleton
        )
        return parsed["tensors"]
