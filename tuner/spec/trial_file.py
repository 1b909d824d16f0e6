"""A CONFIG file given to ``tuner train`` and ``tuner diagnose``: a search spec or a trial config.

The one place that decides which kind a file is. A search spec gives its data and fixed values, and
each searched parameter takes its first option or the middle of its range (on a log scale if log; a
conditional parameter only when its condition holds). A trial config is a flat YAML of TrialConfig
keys. ``overrides`` (``--set key=value``) win over both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import yaml

from tuner.errors import UserError
from tuner.spec.context import parse_yaml
from tuner.spec.load import load_spec
from tuner.spec.model import TOP_KEYS, SearchSpec
from tuner.spec.space import Param
from trainables.config import TrialConfig


def is_search_spec(raw: Any) -> bool:
    return isinstance(raw, dict) and "space" in raw and set(raw) <= TOP_KEYS


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: config file does not exist")
    try:
        return parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path.name}: malformed YAML: {str(err).splitlines()[0]}") from None


def representative_value(param: Param):
    if param.choices:
        return param.choices[0]
    if param.log:
        value = math.sqrt(param.low * param.high)
    else:
        value = (param.low + param.high) / 2
    return int(round(value)) if param.kind == "int" else value


def config_from_file(path: str | Path, overrides: Optional[dict] = None) -> TrialConfig:
    path, overrides = Path(path), dict(overrides or {})
    raw = read_yaml(path)
    if is_search_spec(raw):
        spec = load_spec(path)  # overrides may name searched keys too
        values = {**spec.base_config(), **overrides}
        for param in spec.space:  # in order: a `when` only names earlier parameters
            active = all(values.get(name) in allowed for name, allowed in param.when)
            if param.name not in overrides and active:
                values[param.name] = representative_value(param)
        return TrialConfig.from_dict(values)
    if not isinstance(raw, dict):
        raise UserError(f"{path.name}: must hold a mapping of trial settings")
    values = {**raw, **overrides}
    for key in ("train_dir", "val_dir"):
        if key in values and not Path(values[key]).is_absolute():
            values[key] = str((path.parent / values[key]).resolve())
    return TrialConfig.from_dict(values)


def spec_if_any(path: str | Path, overrides: Optional[dict] = None) -> Optional[SearchSpec]:
    """The search spec in ``path`` (searched keys among ``overrides`` left out), or None when the
    file is a plain trial config."""
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # config_from_file has already said what is wrong with the file
    if not is_search_spec(raw):
        return None
    searched = set(raw.get("space") or {})
    return load_spec(path, {k: v for k, v in (overrides or {}).items() if k not in searched})
