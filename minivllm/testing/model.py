"""Model contracts: greedy tokens equal to transformers' on a tiny random checkpoint of the architecture,
on one rank and over two tensor-parallel ranks (gloo, on the CPU).

The kit builds the checkpoint with transformers' own class of that name (skipped when transformers has
none), float32 with weights drawn wide enough that greedy choices are not near-ties, and continues the
same prompts greedily with transformers (the oracle) and with minivllm: prompts sharing a prefix (so that
the prefix cache serves hits), then chunked prefill on a cache so small that decode preempts.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import torch

from minivllm.testing.checkpoints import TINY, greedy_reference, random_prompts, tiny_checkpoint
from minivllm.testing.kit import Contract, ContractFailure, ContractSkipped

MAX_TOKENS = 12
PREFIX = random_prompts(1, 40, 40, seed=20)[0]  # two full blocks of 16 and a partial one
PROMPTS = [PREFIX] + random_prompts(4, 3, 60, seed=21)
SHARED = [PREFIX + tail for tail in random_prompts(2, 1, 10, seed=22)]  # prefix-cache hits on PROMPTS[0]
SMALL = dict(kvcache_block_size=16, max_model_len=256, dtype="float32", device="cpu")
# a 24-token budget splits prompts into chunks; 6 blocks of 16 hold about two sequences, so decode preempts
TIGHT = dict(SMALL, scheduler="chunked", max_num_batched_tokens=24, num_kvcache_blocks=6)


@functools.cache
def checkpoint(architecture: str) -> tuple[str, list[list[int]]]:
    """The tiny checkpoint of ``architecture`` and transformers' greedy tokens for PROMPTS + SHARED."""
    import transformers

    if not hasattr(transformers, architecture):
        raise ContractSkipped(
            f"transformers has no {architecture}, the oracle of this contract: compare the model "
            "with its own reference in the plugin's tests"
        )
    path = tempfile.mkdtemp(prefix=f"minivllm-kit-{architecture}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        tiny_checkpoint(architecture, path)
        model = getattr(transformers, architecture).from_pretrained(path, dtype=torch.float32).eval()
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    return path, greedy_reference(model, PROMPTS + SHARED, MAX_TOKENS)


def compare(contract: str, architecture: str, settings: dict) -> None:
    from minivllm import LLM, SamplingParams

    path, expected = checkpoint(architecture)
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(path, **settings) as llm:
        got = [out["tokens"] for out in llm.generate(PROMPTS + SHARED, greedy, use_tqdm=False)]
    for i, (mine, theirs) in enumerate(zip(got, expected)):
        if mine != theirs:
            step = next(j for j, (a, b) in enumerate(zip(mine, theirs)) if a != b)
            prompt = (PROMPTS + SHARED)[i]
            raise ContractFailure(
                contract,
                f"greedy tokens differ from transformers' for prompt {i} ({len(prompt)} tokens) at generated "
                f"token {step}: minivllm {mine[step]}, transformers {theirs[step]}",
                f"minivllm.testing.checkpoints.tiny_checkpoint({architecture!r}, path) (config {TINY}, seed 0); "
                f"LLM(path, **{settings}).generate(prompts, SamplingParams(temperature=0, max_tokens={MAX_TOKENS}, "
                f"ignore_eos=True)) against transformers' greedy tokens, prompt {i} = {prompt}",
            )


def greedy_parity(architecture: str, options: dict) -> None:
    compare("greedy_parity", architecture, SMALL)
    compare("greedy_parity", architecture, TIGHT)


def tensor_parallel(architecture: str, options: dict) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rank 0 and the worker share the machine's cores
    try:
        compare("tensor_parallel", architecture, dict(TIGHT, tensor_parallel_size=2))
    finally:
        torch.set_num_threads(threads)


CONTRACTS = [
    Contract(
        "model",
        "greedy_parity",
        "greedy tokens equal transformers' (prefix-cache hits, chunked prefill, preemption)",
        greedy_parity,
    ),
    Contract(
        "model",
        "tensor_parallel",
        "greedy tokens equal transformers' over 2 tensor-parallel ranks (gloo)",
        tensor_parallel,
    ),
]
