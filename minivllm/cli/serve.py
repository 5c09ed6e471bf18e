"""The ``serve`` and ``chat`` subcommands of ``minivllm``."""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing

MODEL_HELP = "checkpoint directory, .gguf file or hub id (default: the embedded SmolLM2-135M)"
VLLM_SHORT_FLAGS = {"tensor_parallel_size": "-tp"}  # vLLM's short forms


def add_model_arguments(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """The model, given as vLLM takes it: ``serve MODEL`` or ``serve --model MODEL`` (``generate``, whose
    positional arguments are prompts, takes ``--model`` only). :func:`model_argument` reads it."""
    if positional:
        parser.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    parser.add_argument("--model", dest="model_flag", metavar="MODEL", default=None, help=MODEL_HELP)


def model_argument(args: argparse.Namespace) -> str | None:
    """The model given positionally or by ``--model`` (both: they must agree); None: the default."""
    positional, flag = getattr(args, "model", None), args.model_flag
    if positional is not None and flag is not None and positional != flag:
        raise ValueError(f"two models given: {positional!r} and --model {flag!r}")
    return flag if flag is not None else positional


def add_engine_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per :class:`EngineConfig` setting (but ``model`` and ``skip``), typed from its
    annotation; vLLM's ``-tp``, ``--dtype half`` and ``--trust-remote-code`` (a no-op) are accepted too."""
    from minivllm.core.config import DTYPE_ALIASES, EngineConfig

    group = parser.add_argument_group("engine settings (as LLM(...)'s)")
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="accepted for vLLM's command lines; no effect: minivllm runs no code from a checkpoint",
    )
    for name, field in EngineConfig.model_fields.items():
        if name == "model" or name in skip:
            continue
        flag, annotation = "--" + name.replace("_", "-"), field.annotation
        flags = (VLLM_SHORT_FLAGS[name], flag) if name in VLLM_SHORT_FLAGS else (flag,)
        if annotation is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=field.description)
            continue
        kwargs: dict = {"default": None, "help": field.description or f"default: {field.default}"}
        if typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(annotation) + (tuple(DTYPE_ALIASES) if name == "dtype" else ())
        elif typing.get_origin(annotation) is dict:
            kwargs["metavar"] = "JSON"  # EngineConfig parses the object
        elif annotation in (int, float):
            kwargs["type"] = annotation
        elif not (annotation is str or isinstance(annotation, types.UnionType)):
            raise TypeError(f"no command-line type for EngineConfig.{name}: {annotation}")
        group.add_argument(*flags, **kwargs)


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The engine settings given on the command line (the rest keep EngineConfig's defaults)."""
    import logging

    from minivllm.core.config import EngineConfig

    if getattr(args, "trust_remote_code", False):
        logging.getLogger("minivllm").warning(
            "--trust-remote-code has no effect: minivllm runs no code from a "
            "checkpoint (its models are its own or plugins')"
        )
    return {
        name: getattr(args, name)
        for name in EngineConfig.model_fields
        if name != "model" and getattr(args, name, None) is not None
    }


def sampling_params(**flags):
    """SamplingParams from command-line values, checked before anything loads; a bad value is a ValueError
    naming its flag (``--max-tokens must be greater than or equal to 1, not -3``)."""
    from pydantic import ValidationError

    from minivllm.core.sampling_params import SamplingParams

    try:
        return SamplingParams(**flags)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            flag = "--" + "-".join(str(part) for part in err["loc"]).replace("_", "-") if err["loc"] else "the flags"
            flag = "-n" if flag == "--n" else flag
            got = f", not {err['input']!r}" if err["loc"] else ""
            problems.append(f"{flag}: {err['msg'].removeprefix('Value error, ')}{got}")
        raise ValueError("; ".join(problems)) from None


def read_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a file holding a Jinja template, or the template itself."""
    if value and os.path.isfile(value):
        with open(value) as f:
            return f.read()
    return value


def api_key(args) -> str | None:
    """``--api-key``, else the first line of ``--api-key-file``, else ``$MINIVLLM_API_KEY``: the last two
    keep the key out of the command line, which ``ps`` shows to every user of the machine."""
    if args.api_key and args.api_key_file:
        raise SystemExit("give --api-key or --api-key-file, not both")
    key = args.api_key
    if args.api_key_file:
        with open(args.api_key_file) as f:
            key = f.readline().strip()
        if not key:
            raise SystemExit(f"--api-key-file {args.api_key_file} holds no key")
    if key is None and (key := os.environ.get("MINIVLLM_API_KEY")) is not None and not key.strip():
        raise SystemExit("$MINIVLLM_API_KEY is set but empty: set a key, or unset it to serve without auth")
    if key is not None and not key.strip():
        raise SystemExit("--api-key is empty: give a key, or leave the flag out to serve without auth")
    return key


def cmd_serve(args) -> None:
    from minivllm.entrypoints.api_server import serve
    from minivllm.entrypoints.async_llm import AsyncLLM
    from minivllm.entrypoints.settings import ServerSettings

    if args.data_parallel_size > 1:
        from minivllm.entrypoints.replicas import replica_arguments, serve_replicas

        argv = args.argv[args.argv.index("serve") + 1 :]
        raise SystemExit(
            serve_replicas(
                replica_arguments(argv),
                args.data_parallel_size,
                args.host,
                args.port,
                args.router_policy,
                args.tensor_parallel_size or 1,
                args.device or "auto",
            )
        )
    settings = ServerSettings(
        api_key=api_key(args),
        chat_template=read_chat_template(args.chat_template),
        **{name: getattr(args, name) for name in SERVER_FLAGS if getattr(args, name) is not None},
    )
    engine = AsyncLLM(
        model_argument(args),
        served_model_name=args.served_model_name,
        engine_process=args.engine_process,
        **engine_kwargs(args),
    )
    serve(engine, settings, host=args.host, port=args.port, log_level=args.uvicorn_log_level)
    if engine.dead:
        raise SystemExit("the engine process died: the server stopped")


def cmd_chat(args) -> None:
    """An interactive conversation on stdin/stdout; the reply streams as it is generated."""
    from minivllm import LLM
    from minivllm.entrypoints.chat import chat_prompt

    # the flags are checked before the model loads: a typo should not cost the load
    params = sampling_params(temperature=args.temperature, max_tokens=args.max_tokens)
    # one conversation: a cache for more sequences would only reserve memory (unless set on the command line)
    llm = LLM(model_argument(args), **{"max_num_seqs": 1, **engine_kwargs(args)})
    template = read_chat_template(args.chat_template)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    try:
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.strip()})
            reply = ""
            for out in llm.stream([chat_prompt(llm.tokenizer, messages, template)], params):
                print(out["delta"], end="", flush=True)
                reply += out["delta"]
            print(flush=True)
            messages.append({"role": "assistant", "content": reply})
    except KeyboardInterrupt:
        print()
    finally:
        llm.close()


# ServerSettings fields given as flags of the same names; their defaults and help live there
SERVER_FLAGS = (
    "public_metrics",
    "max_n",
    "max_prompts",
    "max_request_sequences",
    "max_prompt_chars",
    "max_stop",
    "max_stop_chars",
    "max_tokenizing_chars",
    "max_body_bytes",
    "max_stream_buffer",
    "max_connections",
    "idle_timeout",
    "shutdown_grace_period",
)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    from minivllm.entrypoints.settings import ServerSettings

    group = parser.add_argument_group("limits, metrics and shutdown")
    for name in SERVER_FLAGS:
        field = ServerSettings.model_fields[name]
        flag, help_text = "--" + name.replace("_", "-"), f"{field.description} (default: {field.default})"
        if field.annotation is bool:
            group.add_argument(flag, action="store_true", default=None, help=field.description)
        else:
            group.add_argument(flag, type=field.annotation, default=None, help=help_text)


def add_parsers(sub) -> None:
    serve = sub.add_parser("serve", help="serve the OpenAI API (completions, chat, models, metrics) over HTTP")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(visible in `ps`: prefer --api-key-file or $MINIVLLM_API_KEY)",
    )
    serve.add_argument("--api-key-file", help="read the API key from the first line of this file")
    serve.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "run the engine core in a process of its own, apart from the HTTP side (default; on a 2-core CPU it "
            "measured faster than --no-engine-process, a thread of the server's process)"
        ),
    )
    serve.add_argument(
        "--served-model-name",
        help="the model name clients use (default: the model as given; SmolLM2-135M-Instruct for the embedded one)",
    )
    serve.add_argument(
        "--chat-template", help="a Jinja chat template, or a file holding one (default: the tokenizer's)"
    )
    serve.add_argument(
        "--data-parallel-size",
        "-dp",
        type=int,
        default=1,
        help="N > 1: N replicas (one GPU each, or a share of the CPU cores) on ports PORT+1..PORT+N "
        "behind sglang-router on PORT (needs the 'router' extra)",
    )
    serve.add_argument(
        "--router-policy",
        default="cache_aware",
        help="the router's policy with --data-parallel-size: cache_aware, round_robin, power_of_two or random",
    )
    serve.add_argument("--uvicorn-log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_server_arguments(serve)
    add_engine_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    chat = sub.add_parser("chat", help="chat with a model in the terminal (replies stream)")
    add_model_arguments(chat)
    chat.add_argument("--system", help="a system message to start the conversation with")
    chat.add_argument("--chat-template", help="a Jinja chat template, or a file holding one (default: the tokenizer's)")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    add_engine_arguments(chat)
    chat.set_defaults(func=cmd_chat)
