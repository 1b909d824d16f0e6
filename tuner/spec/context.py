"""Formats every spec error the same way: ``file: key.path: rule``."""

from __future__ import annotations

import math
from typing import Any

import yaml

from tuner.errors import UserError


class SpecError(UserError):
    """A search spec breaks a rule; the message starts with ``file: key.path:``."""


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without aliases: a few lines of ``*name`` references can stand for gigabytes once
    the spec is walked (the "billion laughs"), and a spec has no need of them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """A spec's or a trial config's YAML; every problem, deep nesting included, is a YAMLError."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


class SpecContext:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, rule: str):
        key = key if key.isprintable() else repr(key)[1:-1]  # a newline in a YAML key stays one line
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        raise SpecError(where + rule)

    def mapping(self, key: str, value: Any) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__} {value!r}")
        return value

    def reject_unknown(self, key: str, value: dict, known: set[str]) -> None:
        unknown = sorted(set(map(str, value)) - known)
        if unknown:
            prefix = f"{key}." if key else ""
            self.fail(f"{prefix}{unknown[0]}", f"unknown key; valid keys: {', '.join(sorted(known))}")

    def number(self, key: str, value: Any, *, integer: bool = False, minimum=None, above=None):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            self.fail(key, f"must be a finite number, got {value!r}")
        if integer and int(value) != value:
            self.fail(key, f"must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value!r}")
        if above is not None and value <= above:
            self.fail(key, f"must be > {above}, got {value!r}")
        return int(value) if integer else value
