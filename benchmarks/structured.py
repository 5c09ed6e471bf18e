"""Structured output end to end, with the official ``openai`` client against ``minivllm serve`` (the embedded
SmolLM2-135M unless ``--model``), plus grammar compile times. What it checks:

1. ``--num-json`` (50) chat requests cycling over the 12 schemas of structured_schemas.py (nested objects,
   arrays, enums, required fields, numbers with bounds) through ``response_format`` json_schema: every
   completed output parses and validates (``jsonschema``);
2. ``client.chat.completions.parse`` with a pydantic model;
3. ``tools`` with ``tool_choice="required"``, streamed and not: ``tool_calls`` whose arguments validate
   against the function's schema, ``finish_reason="tool_calls"``;
4. a regex and a choice over ``--samples`` (100) samples each at temperature 1: every one matches;
5. grammar compile time (schema -> validated grammar -> matcher -> first mask, cache bypassed), p50 / p99
   over ``--compile-rounds`` rounds of the 12 schemas, in this process with the engine's own code.

    PYTHONPATH=$PWD python benchmarks/structured.py [--model PATH] [--max-num-seqs 16] [--json out.json]
    PYTHONPATH=$PWD python benchmarks/structured.py --compile-only

Exits non-zero if any check fails. Prints one line per check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_process import free_port, launch  # noqa: E402
from structured_schemas import SCHEMAS  # noqa: E402

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
MODEL = None  # the served model's name, read from /v1/models
PROMPTS = ["Describe a person.", "Give me an example record.", "Fill in the data.", "Answer in JSON."]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    serve_args = [*([args.model] if args.model else []), "--max-num-seqs", str(args.max_num_seqs)]
    proc = launch(port, [*serve_args, "--max-model-len", "2048"], timeout=600)
    return proc, f"http://127.0.0.1:{port}/v1"


def check_json(client, n: int, max_tokens: int) -> dict:
    import jsonschema

    def one(i):
        schema = SCHEMAS[i % len(SCHEMAS)]
        out = client.chat.completions.create(
            model=MODEL,
            max_tokens=max_tokens,
            temperature=0.7,
            seed=i,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}},
        )
        choice = out.choices[0]
        if choice.finish_reason != "stop":
            return "cut"
        jsonschema.validate(json.loads(choice.message.content), schema)
        return "valid"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(n)))
    return {"requests": n, "valid": results.count("valid"), "cut_by_max_tokens": results.count("cut")}


def check_parse(client) -> dict:
    import pydantic

    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=30)
        country: str = pydantic.Field(max_length=30)
        population: int = pydantic.Field(ge=0, le=50_000_000)

    out = client.chat.completions.parse(
        model=MODEL,
        max_tokens=120,
        response_format=City,
        messages=[{"role": "user", "content": "Tell me about Paris."}],
    )
    parsed = out.choices[0].message.parsed
    assert isinstance(parsed, City), out
    return {"parsed": parsed.model_dump()}


def check_tools(client) -> dict:
    import jsonschema

    kwargs = dict(
        model=MODEL,
        max_tokens=120,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    whole = client.chat.completions.create(**kwargs).choices[0]
    with client.chat.completions.stream(**kwargs) as events:
        streamed = events.get_final_completion().choices[0]
    calls = []
    for choice in (whole, streamed):
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            assert call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
            calls.append(call.function.arguments)
    return {"tool_calls": calls}


def check_samples(client, samples: int) -> dict:
    regex, choices = r"[A-Z][a-z]{2,8} [0-9]{1,3}", ["positive", "negative", "neutral"]
    found = {}
    for name, constraint, ok in (
        ("regex", {"regex": regex}, lambda t: re.fullmatch(regex, t)),
        ("choice", {"choice": choices}, lambda t: t in choices),
    ):
        texts = []
        for start in range(0, samples, 20):
            out = client.completions.create(
                model=MODEL,
                prompt="The review says:",
                max_tokens=20,
                temperature=1.0,
                n=min(20, samples - start),
                extra_body={"structured_outputs": constraint},
            )
            texts += [c.text for c in out.choices]
        bad = [t for t in texts if not ok(t)]
        assert not bad, (name, bad)
        found[name] = {"samples": len(texts), "all_match": True, "distinct": len(set(texts))}
    return found


def compile_times(rounds: int) -> dict:
    import llguidance
    import llguidance.numpy as lln

    from minivllm import default_model
    from minivllm.core.loading.checkpoint import Checkpoint
    from minivllm.core.sampling_params import StructuredOutputsParams
    from minivllm.core.structured_output import StructuredOutputs

    tokenizer = Checkpoint.open(default_model()).load_tokenizer()
    times = []
    grammars = StructuredOutputs(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    for _ in range(rounds):
        grammars._cache.clear()  # every round compiles afresh
        for schema in SCHEMAS:
            t0 = time.perf_counter()
            grammar = grammars.check(StructuredOutputsParams(json=schema))
            matcher = llguidance.LLMatcher(grammars.tokenizer, grammar)
            mask = lln.allocate_token_bitmask(1, len(tokenizer))
            lln.fill_next_token_bitmask(matcher, mask)
            times.append((time.perf_counter() - t0) * 1e3)
    grammars.close()
    times.sort()
    return {
        "schemas": len(SCHEMAS),
        "rounds": rounds,
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3),
        "max_ms": round(times[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--num-json", type=int, default=50)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--compile-rounds", type=int, default=20)
    parser.add_argument("--compile-only", action="store_true", help="only the compile times (no server)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    import openai

    results = {"compile": compile_times(args.compile_rounds)}
    print("compile:", results["compile"], flush=True)
    if args.compile_only:
        return
    proc, base_url = start_server(args)
    try:
        client = openai.OpenAI(base_url=base_url, api_key="none", timeout=3600, max_retries=0)
        global MODEL
        MODEL = client.models.list().data[0].id
        for name, fn in (
            ("json", lambda: check_json(client, args.num_json, args.max_tokens)),
            ("parse", lambda: check_parse(client)),
            ("tools", lambda: check_tools(client)),
            ("samples", lambda: check_samples(client, args.samples)),
        ):
            t0 = time.perf_counter()
            results[name] = fn()
            print(f"{name} ({time.perf_counter() - t0:.0f} s):", results[name], flush=True)
    finally:
        proc.terminate()
        proc.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if results["json"]["valid"] + results["json"]["cut_by_max_tokens"] != args.num_json:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
