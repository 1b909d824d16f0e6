"""``tuner train CONFIG``: one trial without Ray, with progress bars, to debug a configuration.

CONFIG is a flat YAML of TrialConfig keys, or a search spec (its data and fixed values are used, and
each searched parameter takes its first option or the middle of its range, on a log scale if log;
a conditional parameter only when its condition holds). ``--set key=value`` overrides any of them.
The run writes ``OUT/checkpoint/`` (checkpoint.pt + artifacts/), ``OUT/metrics.jsonl`` (one line per
epoch) and ``OUT/config.json``; ``--resume`` continues from ``OUT/checkpoint``.
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


def train_from_cli(args) -> int:
    from tuner.cli import parse_assignments

    config = config_from_file(Path(args.config), parse_assignments(args.set))
    out = Path(args.out)
    checkpoint_dir = out / "checkpoint"
    has_checkpoint = (checkpoint_dir / CHECKPOINT_FILE).is_file()
    if args.resume and not has_checkpoint:
        raise UserError(f"--resume: no checkpoint in {checkpoint_dir}")
    if has_checkpoint and not args.resume:
        raise UserError(f"--out {out}: holds a checkpoint already; add --resume to continue it, "
                        "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    history = out / "metrics.jsonl"

    def report(metrics: dict, directory: Optional[Path]) -> None:
        if directory is not None:  # replace, not merge: no stale figures from an earlier epoch
            partial = out / "checkpoint.part"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(directory, partial)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            partial.rename(checkpoint_dir)
        with open(history, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        print(describe_epoch(metrics), flush=True)

    outcome = run_trial(config, report=report, resume_from=checkpoint_dir if args.resume else None,
                        progress=True)
    tags = "".join(f"; {k}={v}" for k, v in outcome.tags.items())
    print(f"trial {outcome.status} after {outcome.epochs_done} epoch(s){tags}; checkpoint and "
          f"artifacts in {checkpoint_dir}, metrics in {history}")
    return 0


def describe_epoch(metrics: dict) -> str:
    """One line per epoch: ``epoch 2: train_loss 1.9 … [running]``."""
    shown = []
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "images_per_s",
                "skipped_images"):
        value = metrics.get(key)
        if isinstance(value, float):
            shown.append(f"{key} {value:.4g}")
        elif value is not None:
            shown.append(f"{key} {value}")
    return f"epoch {metrics.get('epoch')}: {' '.join(shown)} [{metrics.get('status')}]"
