"""The ``space:`` section of a search spec: parameters, distributions and ``when`` conditions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tuner.errors import UserError
from tuner.spec.batch_probe import load_probe, power_of_two_choices, probe_path
from tuner.spec.context import SpecContext
from trainables.config import TrialConfig

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice", "grid")
# Keys of TrialConfig that the spec sets through `data:` and the driver, not through fixed/space.
DATA_FIELDS = {"train_dir", "val_dir", "image_size"}


@dataclass(frozen=True)
class Param:
    """One searched parameter: a distribution and an optional condition on earlier choices."""

    name: str
    kind: str  # one of DISTRIBUTIONS
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # ((param, allowed values), ...): all must hold


def _trial_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrialConfig)}


def check_trial_keys(ctx: SpecContext, section: str, values: dict) -> None:
    allowed = _trial_fields() - DATA_FIELDS
    for key in values:
        base = str(key).split(".", 1)[0]
        if base not in allowed:
            ctx.fail(f"{section}.{key}", f"unknown trial setting; valid: {', '.join(sorted(allowed))}")


def parse_space(ctx: SpecContext, raw: Any, base_dir: Path) -> tuple[Param, ...]:
    raw = ctx.mapping("space", raw)
    check_trial_keys(ctx, "space", raw)
    params: list[Param] = []
    for name, entry in raw.items():
        if isinstance(entry, dict) and entry.get("choice") == "auto":
            entry = {**entry, "choice": _auto_batch_sizes(ctx, str(name), base_dir)}
        params.append(_parse_param(ctx, str(name), entry, {p.name: p for p in params}))
    return tuple(params)


def _auto_batch_sizes(ctx: SpecContext, name: str, base_dir: Path) -> list[int]:
    """``batch_size: {choice: auto}``: the powers of two up to the largest batch that the probe
    (``tuner diagnose batch-size SPEC``) found to fit every architecture/width of this spec."""
    if name != "batch_size":
        ctx.fail(f"space.{name}.choice", "'auto' is only for batch_size")
    path = probe_path(base_dir / ctx.source)
    try:
        choices = power_of_two_choices(load_probe(path), minimum=16)
    except UserError as err:
        ctx.fail(f"space.{name}.choice", f"auto needs the probe {path.name} "
                 f"(run: tuner diagnose batch-size {ctx.source}): {err}")
    if not choices:
        ctx.fail(f"space.{name}.choice", f"auto: the probe {path.name} found no batch size >= 16 that fits")
    return choices


def _parse_param(ctx: SpecContext, name: str, entry: Any, earlier: dict[str, Param]) -> Param:
    key = f"space.{name}"
    entry = ctx.mapping(key, entry)
    kinds = [k for k in entry if k in DISTRIBUTIONS]
    ctx.reject_unknown(key, entry, set(DISTRIBUTIONS) | {"when", "log", "step"})
    if len(kinds) != 1:
        ctx.fail(key, f"needs exactly one distribution of {', '.join(DISTRIBUTIONS)}, got {kinds or 'none'}")
    kind = kinds[0]
    value = entry[kind]
    when = _parse_when(ctx, key, entry.get("when"), earlier)
    if kind in ("choice", "grid"):
        if not isinstance(value, list) or not value:
            ctx.fail(f"{key}.{kind}", "must be a non-empty list of options")
        if len({repr(v) for v in value}) != len(value):
            ctx.fail(f"{key}.{kind}", f"lists an option twice: {value}")
        return Param(name, kind, choices=tuple(value), when=when)
    if not isinstance(value, list) or len(value) != 2:
        ctx.fail(f"{key}.{kind}", f"must be [low, high], got {value!r}")
    integer = kind == "int"
    low = ctx.number(f"{key}.{kind}", value[0], integer=integer)
    high = ctx.number(f"{key}.{kind}", value[1], integer=integer)
    if kind == "loguniform" and low <= 0:
        ctx.fail(f"{key}.{kind}", f"low must be > 0, got {low}")
    if low >= high:
        ctx.fail(f"{key}.{kind}", f"low must be < high, got [{low}, {high}]")
    log = bool(entry.get("log", kind == "loguniform"))
    if log and low <= 0:
        ctx.fail(f"{key}.log", f"a log scale needs low > 0, got {low}")
    step = entry.get("step")
    if step is not None:
        step = ctx.number(f"{key}.step", step, above=0)
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(ctx: SpecContext, key: str, raw: Any, earlier: dict[str, Param]):
    if raw is None:
        return ()
    raw = ctx.mapping(f"{key}.when", raw)
    conditions = []
    for parent, allowed in raw.items():
        if parent not in earlier:
            names = ", ".join(earlier) or "none"
            ctx.fail(f"{key}.when.{parent}", f"names no earlier choice parameter (earlier: {names})")
        if earlier[parent].kind not in ("choice", "grid"):
            ctx.fail(f"{key}.when.{parent}", "conditions may only name choice or grid parameters")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        bad = [a for a in allowed if a not in earlier[parent].choices]
        if bad:
            ctx.fail(f"{key}.when.{parent}", f"{bad} is not among its options {list(earlier[parent].choices)}")
        conditions.append((parent, tuple(allowed)))
    return tuple(conditions)
