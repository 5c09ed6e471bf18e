"""Arms: the configurations a benchmark compares, parsed from ``--ab`` / ``--set`` and validated up front.

``--ab KEY=V1,V2`` names an :class:`~minivllm.EngineConfig` field and the values to compare; several
``--ab`` form the cross product, and the first value of each is the baseline. ``--set KEY=V`` fixes a
field for every arm. Every arm's whole config is validated by ``EngineConfig`` (so plugin names are
checked against the registries) before anything runs.

One key is the requests', not the engine's: ``structured_output`` constrains every timed request of the arm
with one of :data:`STRUCTURED_OUTPUTS` (``none`` for no constraint), so ``--ab structured_output=none,json``
measures what structured output costs on the same prompts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from pydantic import ValidationError

from minivllm.core.config import EngineConfig

# the constraints an arm's timed requests may carry (StructuredOutputsParams fields): ones that cannot end
# (nor allow EOS) within a workload's output lengths, so a constrained request runs its whole max_tokens as
# an unconstrained one does, and the arms do the same work
STRUCTURED_OUTPUTS: dict[str, dict | None] = {
    "none": None,
    "json": {
        "json": {
            "type": "array",
            "minItems": 1000,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0, "maximum": 10**9},
                    "name": {"type": "string", "maxLength": 40},
                    "kind": {"enum": ["a", "b", "c"]},
                    "score": {"type": "number"},
                },
                "required": ["id", "name", "kind"],
            },
        }
    },
    "regex": {"regex": "([A-Za-z]+ ){1000}"},
}
SETTINGS = sorted([*(name for name in EngineConfig.model_fields if name != "model"), "structured_output"])


@dataclass
class Arm:
    name: str  # "key=value,..." of what the arm varies; "baseline" when nothing does
    overrides: dict  # the arm's EngineConfig fields besides ``model``, as validated (typed), and structured_output
    config: EngineConfig = field(repr=False)
    structured_output: dict | None = None  # the constraint of its timed requests (a STRUCTURED_OUTPUTS value)


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not value.strip():
        raise ValueError(f"{flag} {text!r}: expected KEY=VALUE")
    if key not in SETTINGS:
        raise ValueError(f"{flag} {text!r}: unknown setting {key!r}; settings: {', '.join(SETTINGS)}")
    return key, value.strip()


def parse_ab(texts: list[str]) -> list[dict[str, str]]:
    """``["scheduler=fcfs,chunked", "enforce_eager=true,false"]`` -> the cross product as dicts of
    raw strings, baseline first."""
    axes: dict[str, list[str]] = {}
    for text in texts:
        key, values = split_assignment(text, "--ab")
        if key in axes:
            raise ValueError(f"--ab {key} is given twice")
        axes[key] = [v.strip() for v in values.split(",")]
        if not all(axes[key]):
            raise ValueError(f"--ab {text!r}: an empty value")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def parse_set(texts: list[str]) -> dict[str, str]:
    settings = {}
    for text in texts:
        key, value = split_assignment(text, "--set")
        if key in settings:
            raise ValueError(f"--set {key} is given twice")
        settings[key] = value
    return settings


def describe(error: dict) -> str:
    """One pydantic error as "field: problem" (a whole-config check names no field)."""
    message = error["msg"].removeprefix("Value error, ")
    field_name = ".".join(map(str, error["loc"]))
    return f"{field_name}: {message}" if field_name else message


def build_arms(model: str, arms: list[dict], settings: dict | None = None) -> list[Arm]:
    """Validate every arm (``settings`` plus its own fields) through ``EngineConfig``; raises ValueError
    naming the arm and the problem. Values may be strings (coerced: ``"true"``, ``"16"``) or typed."""
    settings = dict(settings or {})
    if not arms:
        arms = [{}]
    built = []
    for fields in arms:
        for key in fields:
            if key not in SETTINGS:
                raise ValueError(f"arm {fields}: unknown setting {key!r}; settings: {', '.join(SETTINGS)}")
            if key in settings:
                raise ValueError(f"{key!r} is both compared and fixed: use --ab or --set, not both")
        name = ",".join(f"{k}={v}" for k, v in fields.items()) or "baseline"
        engine_fields = {k: v for k, v in {**settings, **fields}.items() if k != "structured_output"}
        constraint = {**settings, **fields}.get("structured_output", "none")
        if constraint not in STRUCTURED_OUTPUTS:
            raise ValueError(
                f"arm {name}: structured_output {constraint!r}; choose one of {', '.join(STRUCTURED_OUTPUTS)}"
            )
        try:
            config = EngineConfig(model=model, **engine_fields)
        except ValidationError as e:
            raise ValueError(f"arm {name}: {'; '.join(map(describe, e.errors()))}") from None
        overrides = {key: getattr(config, key, constraint) for key in [*settings, *fields]}
        built.append(Arm(name, overrides, config, STRUCTURED_OUTPUTS[constraint]))
    for i, arm in enumerate(built):
        twin = next(
            (
                other
                for other in built[:i]
                if (other.config, other.structured_output) == (arm.config, arm.structured_output)
            ),
            None,
        )
        if twin is not None:
            raise ValueError(f"arms {twin.name} and {arm.name} are the same configuration")
    return built
