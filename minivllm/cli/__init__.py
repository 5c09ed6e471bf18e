"""The ``minivllm`` command: ``generate``, ``chat``, ``serve``, ``bench``, ``plugins`` and ``check-plugin``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from minivllm.cli.serve import add_engine_arguments, add_model_arguments


def cmd_generate(args) -> None:
    from minivllm import LLM
    from minivllm.cli.serve import engine_kwargs, model_argument, sampling_params

    # the flags are checked before the model loads: a typo should not cost the load
    params = sampling_params(
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        top_p=args.top_p,
        top_k=args.top_k,
        n=args.n,
    )

    # the prompts run as one batch, so the KV cache needs room for that many sequences, no more
    llm = LLM(model_argument(args), **{"max_num_seqs": len(args.prompt) * args.n, **engine_kwargs(args)})
    prompts = []
    for text in args.prompt:
        if args.chat and llm.tokenizer.chat_template:
            text = llm.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            prompts.append(llm.tokenizer.encode(text, add_special_tokens=False))
        else:
            prompts.append(text)
    for out in llm.generate(prompts, params, use_tqdm=False):
        for completion in out["outputs"]:
            print(completion["text"].strip())
    llm.close()


def cmd_plugins(args) -> None:
    from minivllm.core import plugins

    for info in plugins.plugin_infos():
        print(f"{info.name}  [{info.distribution or 'built-in'}]  hooks: {', '.join(info.hooks) or '-'}")
    for registry in plugins.registries().values():
        for name in registry.names():
            print(f"  {registry.kind}: {name}  (from {registry.source(name)})")


def cmd_check_plugin(args) -> None:
    from minivllm.testing import check_plugin

    logging.getLogger("minivllm").setLevel(logging.WARNING)  # the engines the kit builds would drown the verdicts
    results = check_plugin(args.kind, args.name, json.loads(args.options) if args.options else None)
    for r in results:
        print(f"{r.outcome.upper():8}{r.contract.name}: {r.contract.summary}")
        if r.detail:
            print(textwrap.indent(r.detail, " " * 8))
    broken = [r.contract.name for r in results if r.outcome == "failed"]
    checked = sum(r.outcome != "skipped" for r in results)
    if broken:
        verdict = f"{len(broken)} of {len(results)} contracts broken ({', '.join(broken)})"
    elif checked:
        verdict = f"every contract kept ({checked} checked, {len(results) - checked} skipped)"
    else:
        verdict = "nothing checked: every contract was skipped here"
    print(f"{args.kind} {args.name!r}: {verdict}")
    if broken:
        raise SystemExit(1)


def add_bench_parser(sub) -> None:
    from minivllm.cli.bench import add_parser  # arguments only: the benchmark itself imports on use

    add_parser(sub)


def add_entrypoint_parsers(sub) -> None:
    from minivllm.cli.serve import add_parsers  # arguments only: the server imports FastAPI on use

    add_parsers(sub)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="minivllm", description="A small, plugin-based LLM inference engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text for one or more prompts")
    gen.add_argument("prompt", nargs="+", help="prompt text (several prompts run as one batch)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1, help="-1 = off (default)")
    gen.add_argument("-n", type=int, default=1, help="completions per prompt, each printed on its own line")
    gen.add_argument("--seed", type=int, default=None, help="the requests' sampling seed")
    gen.add_argument("--no-chat", dest="chat", action="store_false", help="do not apply the chat template")
    add_model_arguments(gen, positional=False)  # the positional arguments are prompts
    add_engine_arguments(gen, skip=("seed",))  # --seed is the requests'
    gen.set_defaults(func=cmd_generate)
    plug = sub.add_parser("plugins", help="list loaded plugins and what they register")
    plug.set_defaults(func=cmd_plugins)
    check = sub.add_parser(
        "check-plugin", help="run the conformance kit on a registered plugin (exit 1 if it breaks a contract)"
    )
    check.add_argument("kind", choices=["scheduler", "kv_allocator", "sampler", "attention_backend", "model"])
    check.add_argument("name", help="the name it is registered under (a model: its architecture name)")
    check.add_argument("--options", help="the plugin's options, a JSON object (schedulers)")
    check.set_defaults(func=cmd_check_plugin)
    add_entrypoint_parsers(sub)
    add_bench_parser(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: `serve --data-parallel-size` passes it on
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
