"""The frame of the conformance kit: contracts, how they fail or are skipped, and running a kind's suite."""

from __future__ import annotations

import importlib
import textwrap
import traceback
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from minivllm.core import plugins

# plugin kind (as ``check-plugin`` names it) -> (the registry's hook name, the module holding its suite)
SUITES = {
    "scheduler": ("register_schedulers", "minivllm.testing.scheduler"),
    "kv_allocator": ("register_kv_allocators", "minivllm.testing.kv_allocator"),
    "sampler": ("register_samplers", "minivllm.testing.sampler"),
    "attention_backend": ("register_attention_backends", "minivllm.testing.attention"),
    "model": ("register_models", "minivllm.testing.model"),
}


class ContractFailure(AssertionError):
    """A plugin broke a contract: which one, what happened, and a minimal reproduction (the smallest case
    the kit found that still fails, in words a plugin author can replay)."""

    def __init__(self, contract: str, message: str, reproduction: str):
        self.contract = contract
        self.message = message
        self.reproduction = reproduction
        super().__init__(
            f"contract {contract!r} broken: {message}\nminimal reproduction:\n{textwrap.indent(reproduction, '    ')}"
        )


class ContractSkipped(unittest.SkipTest):
    """The contract cannot be checked here (a GPU backend without a GPU, a model transformers lacks).
    pytest reports it as a skip with this reason."""


@dataclass(frozen=True)
class Contract:
    """One promise every implementation of ``kind`` must keep. :meth:`check` returns when the plugin keeps
    it, raises :class:`ContractFailure` when it does not and :class:`ContractSkipped` when it cannot tell."""

    kind: str
    name: str
    summary: str
    run: Callable[[str, dict[str, Any]], None]  # (registered plugin name, plugin options)

    def check(self, plugin: str, options: dict[str, Any] | None = None) -> None:
        """``options``: the plugin's own settings, for kinds whose plugins take them (schedulers)."""
        validate(self.kind, plugin, options)
        self.run(plugin, options or {})

    def __str__(self) -> str:
        return f"{self.kind}.{self.name}"


def registry(kind: str):
    """The registry of a plugin kind ("scheduler", "kv_allocator", "sampler", "attention_backend", "model")."""
    if kind not in SUITES:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(SUITES)}")
    return plugins.registries()[SUITES[kind][0]]


def validate(kind: str, name: str, options: dict[str, Any] | None) -> None:
    """Raise ValueError unless ``name`` is a registered plugin of ``kind`` and takes ``options``."""
    registry(kind).check(name)
    if options and kind != "scheduler":
        raise ValueError(f"{kind} plugins take no options")
    if options:
        registry(kind).options(name, options)


def contracts(kind: str) -> list[Contract]:
    """The suite of ``kind``, for ``pytest.mark.parametrize``."""
    registry(kind)
    return list(importlib.import_module(SUITES[kind][1]).CONTRACTS)


@dataclass
class Result:
    contract: Contract
    outcome: str  # "passed", "failed" or "skipped"
    detail: str = ""  # the failure (with its reproduction) or the reason for the skip


def check_plugin(kind: str, name: str, options: dict[str, Any] | None = None) -> list[Result]:
    """Run every contract of ``kind`` on the plugin registered as ``name``. An exception other than a
    contract failure (the plugin crashed where the kit did not catch it) fails that contract too. An unknown
    kind or name, or options the plugin does not take, raise ValueError first."""
    validate(kind, name, options)
    results = []
    for contract in contracts(kind):
        try:
            contract.check(name, options)
        except ContractFailure as e:
            results.append(Result(contract, "failed", str(e)))
        except ContractSkipped as e:
            results.append(Result(contract, "skipped", str(e)))
        except Exception as e:  # noqa: BLE001 - any crash breaks the contract being checked
            trace = "".join(traceback.format_exception(e)).rstrip()
            results.append(Result(contract, "failed", f"contract {contract.name!r} broken: it raised\n{trace}"))
        else:
            results.append(Result(contract, "passed"))
    return results
