"""Pick the grammar engine by measurement: llguidance vs xgrammar on the embedded SmolLM2 tokenizer.

For each schema of ``structured_schemas.SCHEMAS``: the compile time (schema -> a matcher ready for its
first mask; xgrammar's compiler cache is cleared between runs) and the per-token cost of a step (fill the
next-token bitmask, then advance by the token) along one valid output, the same token sequence for both
engines (drawn by a seeded random walk through llguidance's masks, compact JSON).

    PYTHONPATH=$PWD python benchmarks/grammar_engines.py
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from structured_schemas import SCHEMAS  # noqa: E402


def tokenizer():
    from minivllm import default_model
    from minivllm.core.loading.checkpoint import Checkpoint

    return Checkpoint.open(default_model()).load_tokenizer()


def walk(ll_tok, schema: dict, seed: int, limit: int = 200) -> list[int]:
    """A valid token sequence for ``schema``: random allowed tokens until the grammar accepts."""
    import llguidance
    import llguidance.numpy as lln

    rng = random.Random(seed)
    m = llguidance.LLMatcher(ll_tok, llguidance.LLMatcher.grammar_from_json_schema(schema))
    mask = lln.allocate_token_bitmask(1, ll_tok.vocab_size)
    tokens = []
    while not m.is_stopped() and len(tokens) < limit:
        lln.fill_next_token_bitmask(m, mask)
        bits = np.unpackbits(mask[0].view(np.uint8), bitorder="little")[: ll_tok.vocab_size]
        allowed = np.flatnonzero(bits)
        eos = ll_tok.eos_token
        if m.is_accepting() and eos in allowed:
            break
        choice = int(rng.choice([t for t in allowed if t != eos]))
        assert m.consume_token(choice), m.get_error()
        tokens.append(choice)
    return tokens


def bench_llguidance(hf, schemas, walks):
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lln

    t0 = time.perf_counter()
    tok = llguidance.hf.from_tokenizer(hf)
    setup = time.perf_counter() - t0
    compile_ms, token_us = [], []
    mask = lln.allocate_token_bitmask(1, tok.vocab_size)
    for schema, tokens in zip(schemas, walks):
        t0 = time.perf_counter()
        m = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_json_schema(schema))
        lln.fill_next_token_bitmask(m, mask)  # the first mask: llguidance builds its lexer lazily
        compile_ms.append((time.perf_counter() - t0) * 1e3)
        m.consume_token(tokens[0])
        t0 = time.perf_counter()
        for t in tokens[1:]:
            lln.fill_next_token_bitmask(m, mask)
            assert m.consume_token(t), m.get_error()
        token_us.append((time.perf_counter() - t0) / max(1, len(tokens) - 1) * 1e6)
    return setup, compile_ms, token_us


def bench_xgrammar(hf, schemas, walks, vocab_size):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    setup = time.perf_counter() - t0
    compile_ms, token_us = [], []
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    for schema, tokens in zip(schemas, walks):
        t0 = time.perf_counter()
        m = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
        m.fill_next_token_bitmask(mask)
        compile_ms.append((time.perf_counter() - t0) * 1e3)
        m.accept_token(tokens[0])
        t0, n = time.perf_counter(), 0
        for t in tokens[1:]:  # stops where xgrammar's JSON differs from llguidance's (rare number forms)
            m.fill_next_token_bitmask(mask)
            if not m.accept_token(t):
                break
            n += 1
        token_us.append((time.perf_counter() - t0) / max(1, n) * 1e6)
    return setup, compile_ms, token_us


def main() -> None:
    import llguidance.hf

    torch.set_num_threads(1)
    hf = tokenizer()
    ll_tok = llguidance.hf.from_tokenizer(hf)
    walks = [walk(ll_tok, s, seed) for seed, s in enumerate(SCHEMAS)]
    print(f"{len(SCHEMAS)} schemas, {sum(map(len, walks))} tokens in all (vocab {len(hf)})")
    for name, run in (
        ("llguidance", lambda: bench_llguidance(hf, SCHEMAS, walks)),
        ("xgrammar", lambda: bench_xgrammar(hf, SCHEMAS, walks, len(hf))),
    ):
        run()  # warm-up (imports, first allocations)
        setup, compile_ms, token_us = run()
        print(
            f"{name:11s} tokenizer setup {setup * 1e3:7.1f} ms | compile p50 {statistics.median(compile_ms):6.2f} "
            f"max {max(compile_ms):6.2f} ms | per token mean {statistics.mean(token_us):6.1f} "
            f"max {max(token_us):6.1f} us"
        )


if __name__ == "__main__":
    main()
