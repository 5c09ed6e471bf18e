"""The ``minivllm bench`` subcommand: arguments, and the run that prints the table and writes the files."""

from __future__ import annotations

import argparse
import importlib.util

from minivllm.bench.workloads import WORKLOADS
from minivllm.cli.serve import add_model_arguments, model_argument


def add_parser(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="A/B-compare engine configurations on a workload",
        description="Run each configuration (arm) in its own processes, cross-check their greedy outputs, "
        "time interleaved repeats, and compare output tokens/s to the first arm with a bootstrap "
        "95% interval and a verdict.",
    )
    add_model_arguments(bench)
    bench.add_argument(
        "--workload", default="random", help=f"{', '.join(WORKLOADS)} or file:PATH.jsonl (default: random)"
    )
    bench.add_argument(
        "--num-prompts", type=int, default=None, help="requests in the workload (default: 256; a file's: all its lines)"
    )
    bench.add_argument(
        "--ab",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config field and the values to compare (repeatable: the cross product); "
        "the first value is the baseline",
    )
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=V",
        dest="settings",
        help="a config field fixed for every arm (repeatable)",
    )
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per arm, interleaved (default: 5)")
    bench.add_argument("--max-input-len", type=int, default=None, help="scale prompt lengths down to this cap")
    bench.add_argument("--max-output-len", type=int, default=None, help="scale output lengths down to this cap")
    bench.add_argument("--seed", type=int, default=0, help="workload seed")
    bench.add_argument("--temperature", type=float, default=0.6, help="of the timed requests (default: 0.6)")
    bench.add_argument("--top-k", type=int, default=-1, help="of the timed requests (default: off)")
    bench.add_argument("--top-p", type=float, default=1.0, help="of the timed requests (default: off)")
    bench.add_argument("--min-p", type=float, default=0.0, help="of the timed requests (default: off)")
    bench.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    bench.add_argument("--plot", default=None, metavar="PATH", help="write a PNG (needs minivllm[plot])")
    bench.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from minivllm.bench import ArmFailed, compare
    from minivllm.bench.arms import parse_ab, parse_set

    if args.plot and importlib.util.find_spec("matplotlib") is None:  # fail before the run, not after it
        raise SystemExit("error: --plot needs matplotlib: pip install 'minivllm[plot]'")
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p}
    from minivllm.cli.serve import sampling_params  # noqa: I001 (after the plot check: imports pydantic)

    sampling_params(**sampling)  # bad flags fail here, before any arm loads the model
    model = model_argument(args)
    if model is None:
        from minivllm.core.loading.default_model import default_model

        model = default_model()
    try:
        result = compare(
            model,
            parse_ab(args.ab),
            workload=args.workload,
            num_prompts=args.num_prompts,
            repeats=args.repeats,
            settings=parse_set(args.settings),
            seed=args.seed,
            max_input_len=args.max_input_len,
            max_output_len=args.max_output_len,
            sampling=sampling,
            progress=args.progress,
        )
    except ArmFailed as e:
        raise SystemExit(f"error: {e}") from None
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            f.write(result.to_json() + "\n")
    if args.plot:
        from minivllm.bench.plot import plot

        plot(result, args.plot)
