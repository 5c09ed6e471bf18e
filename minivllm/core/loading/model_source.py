"""Where a model's files are: a local path, or a Hugging Face hub id resolved through ``huggingface_hub``.

``model`` is taken as a local path first (a checkpoint directory or a ``.gguf`` file), as vLLM does; a
name that is no local path but reads as a hub id (``Org/name``) is looked up with ``snapshot_download``,
which answers from the hub cache (``HF_HUB_CACHE``, ``HF_HOME``) when the files are there and
``HF_HUB_OFFLINE=1`` is set or the hub cannot be reached, and downloads the checkpoint's config,
tokenizer and safetensors files otherwise. A failure says everything that was tried.
"""

from __future__ import annotations

import os
import re

# what a checkpoint needs from a hub repository: not its other formats (.bin, .gguf, ONNX, ...)
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+|[\w.-]+")  # "Org/name" or a bare "name"


def looks_like_hub_id(model: str) -> bool:
    return bool(_HUB_ID.fullmatch(model)) and not model.startswith(".") and ".." not in model


def resolve_model(model: str, revision: str | None = None) -> str:
    """The local path of ``model``: itself if it exists, else the hub snapshot of that id at ``revision``
    (a branch, tag or commit; default: main). Raises ValueError saying what was tried."""
    if os.path.exists(model):
        return model
    tried = [f"no local path {os.path.abspath(model)!r}"]
    if not looks_like_hub_id(model):
        raise ValueError(f"model {model!r} not found: {tried[0]}, and it is not a Hugging Face hub id (Org/name)")
    from huggingface_hub import constants, snapshot_download

    # read at call time, not at huggingface_hub's import, so that a setting made in the process counts
    cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or constants.HF_HUB_OFFLINE
    try:
        return snapshot_download(
            model, revision=revision, cache_dir=cache_dir, local_files_only=offline, allow_patterns=HUB_FILES
        )
    except Exception as e:  # offline and not cached, unknown repo, gated, no network: all end here
        where = f"the hub cache {cache_dir!r}"
        if offline:
            tried.append(
                f"{where} has no snapshot of it at revision {revision or 'main'!r} (HF_HUB_OFFLINE is set, "
                "so the hub was not asked)"
            )
        else:
            tried.append(f"neither {where} nor the hub gave revision {revision or 'main'!r}")
        raise ValueError(f"model {model!r} not found: {'; '.join(tried)} ({type(e).__name__}: {e})") from None
