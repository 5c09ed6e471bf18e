"""A named collection of plugin classes of one kind, filled by the plugin hooks."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T")


@dataclass
class Entry:
    target: type | str  # the class, or "module:attr" imported on first use
    source: str  # name of the plugin that registered it
    checked: bool = False  # whether ``target`` was resolved and found to implement the interface


class Registry(Generic[T]):
    """Plugin classes of one kind by name. Each must subclass ``interface`` and implement all of its
    abstract methods; that is checked when a class is first resolved (:meth:`get`), so that a lazy
    ``"module:attr"`` target is imported only when it is used."""

    def __init__(self, kind: str, interface: type[T]):
        self.kind = kind
        self.interface = interface
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: type[T] | str, source: str = "?") -> None:
        if not isinstance(target, (type, str)):
            raise TypeError(f"{self.kind} {name!r}: register a class or a 'module:attr' string, got {target!r}")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: lazy target {target!r} must look like 'module:attr'")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is registered twice: by {self._entries[name].source!r} and by {source!r}"
            )
        self._entries[name] = Entry(target, source)

    def clear(self) -> None:
        self._entries.clear()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def source(self, name: str) -> str:
        return self._entries[name].source

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> None:
        """Raise a ValueError listing the registered names unless ``name`` is one of them."""
        if name not in self._entries:
            known = ", ".join(self.names()) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {known}")

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, imported if it was registered lazily. Raises TypeError,
        naming the plugin, if it does not implement the interface."""
        self.check(name)
        entry = self._entries[name]
        if not entry.checked:
            if isinstance(entry.target, str):
                module, _, attr = entry.target.partition(":")
                entry.target = getattr(importlib.import_module(module), attr)
            self._check_interface(name, entry)
            entry.checked = True
        return entry.target

    def options(self, name: str, values: dict[str, Any]) -> BaseModel:
        """``values`` validated against the plugin's ``Options`` model; raises ValueError naming the plugin
        and each bad field."""
        model = self.get(name).Options
        try:
            return model.model_validate(values)
        except ValidationError as e:
            known = ", ".join(model.model_fields) or "none"
            problems = [
                f"{self.kind} {name!r} has no option {err['loc'][0]!r} (its options: {known})"
                if err["type"] == "extra_forbidden"
                else f"{self.kind} {name!r} option {'.'.join(map(str, err['loc']))!r}: {err['msg']}"
                for err in e.errors()
            ]
            raise ValueError("; ".join(problems)) from None

    def _check_interface(self, name: str, entry: Entry) -> None:
        where = f"{self.kind} {name!r} (registered by plugin {entry.source!r})"
        interface = f"{self.interface.__module__}.{self.interface.__qualname__}"
        if not (isinstance(entry.target, type) and issubclass(entry.target, self.interface)):
            raise TypeError(f"{where} is {entry.target!r}, which does not subclass {interface}")
        if inspect.isabstract(entry.target):
            missing = ", ".join(sorted(entry.target.__abstractmethods__))
            raise TypeError(f"{where}: {entry.target.__qualname__} does not implement {missing} of {interface}")
