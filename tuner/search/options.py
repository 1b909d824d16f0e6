"""Typed options of a registry entry (a sampler's, a scheduler's): declared once, checked once.

A sampler or scheduler entry lists the options it accepts; the spec parser checks what a user wrote
against that list, so an unknown or mistyped option is one line naming the valid ones instead of a
keyword that the builder silently drops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Option:
    kind: type  # bool, int, float or str
    default: Any  # None: the library's own default
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: tuple = ()
    help: str = ""


def check_options(given: dict, declared: dict[str, Option], *, where: str,
                  fail: Callable[[str, str], Any]) -> dict:
    """The options with defaults filled in; ``fail(key, rule)`` raises for a bad one."""
    for key in given:
        if key not in declared:
            valid = ", ".join(sorted(declared)) or "none"
            fail(f"{where}.{key}", f"unknown option; valid options: {valid}")
    resolved = {}
    for key, option in declared.items():
        value = given.get(key, option.default)
        if key in given:
            value = _checked(value, option, lambda rule, k=key: fail(f"{where}.{k}", rule))
        resolved[key] = value
    return resolved


def _checked(value: Any, option: Option, fail: Callable[[str], Any]) -> Any:
    if option.kind is bool:
        if not isinstance(value, bool):
            fail(f"must be true or false, got {value!r}")
        return value
    if option.kind is str:
        if not isinstance(value, str):
            fail(f"must be a string, got {value!r}")
    else:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (isinstance(value, float) and not math.isfinite(value)):
            fail(f"must be a finite number, got {value!r}")
        if option.kind is int and int(value) != value:
            fail(f"must be a whole number, got {value!r}")
        value = option.kind(value)
        if option.minimum is not None and value < option.minimum:
            fail(f"must be >= {option.minimum:g}, got {value!r}")
        if option.maximum is not None and value > option.maximum:
            fail(f"must be <= {option.maximum:g}, got {value!r}")
    if option.choices and value not in option.choices:
        fail(f"must be one of {', '.join(map(str, option.choices))}, got {value!r}")
    return value
