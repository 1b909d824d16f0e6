"""``tuner train CONFIG``: one trial without Ray, with progress bars, to debug a configuration.

CONFIG is a flat YAML of TrialConfig keys, or a search spec (its data and fixed values are used, and
each searched parameter takes its first option or the middle of its range, on a log scale if log).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional

import yaml

from tuner.errors import UserError
from tuner.spec import TOP_KEYS, Param, load_spec
from trainables.checkpoint import CHECKPOINT_FILE
from trainables.config import TrialConfig
from trainables.runner import run_trial


def representative_value(param: Param):
    if param.choices:
        return param.choices[0]
    if param.log:
        value = math.sqrt(param.low * param.high)
    else:
        value = (param.low + param.high) / 2
    return int(round(value)) if param.kind == "int" else value


def config_from_file(path: Path, overrides: dict) -> TrialConfig:
    if not path.is_file():
        raise UserError(f"{path}: config file does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path.name}: malformed YAML: {str(err).splitlines()[0]}") from None
    if isinstance(raw, dict) and "space" in raw and set(raw) <= TOP_KEYS:
        spec = load_spec(path)  # overrides may name searched keys too
        values = {**spec.base_config()}
        for param in spec.space:
            values[param.name] = representative_value(param)
        values.update(overrides)
        return TrialConfig.from_dict(values)
    if not isinstance(raw, dict):
        raise UserError(f"{path.name}: must hold a mapping of trial settings")
    values = {**raw, **overrides}
    for key in ("train_dir", "val_dir"):
        if key in values and not Path(values[key]).is_absolute():
            values[key] = str((path.parent / values[key]).resolve())
    return TrialConfig.from_dict(values)


def train_from_cli(args) -> int:
    from tuner.cli import parse_assignments

    config = config_from_file(Path(args.config), parse_assignments(args.set))
    out = Path(args.out)
    checkpoint_dir = out / "checkpoint"
    resume: Optional[Path] = checkpoint_dir if args.resume and (checkpoint_dir / CHECKPOINT_FILE).is_file() else None
    if args.resume and resume is None:
        raise UserError(f"--resume: no checkpoint in {checkpoint_dir}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))

    def report(metrics: dict, directory: Optional[Path]) -> None:
        if directory is not None:
            shutil.copytree(directory, checkpoint_dir, dirs_exist_ok=True)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
        print(json.dumps(shown))

    outcome = run_trial(config, report=report, resume_from=resume, progress=True)
    print(f"trial {outcome.status} after {outcome.epochs_done} epoch(s); checkpoint in {checkpoint_dir}")
    return 0
