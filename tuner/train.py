"""``tuner train CONFIG``: one trial without Ray, with progress bars, to debug a configuration.

CONFIG is a flat YAML of TrialConfig keys, or a search spec (``tuner.spec.trial_file`` says how
each is read). ``--set key=value`` overrides any of them.
The run writes ``OUT/checkpoint/`` (checkpoint.pt + artifacts/), ``OUT/metrics.jsonl`` (one line per
epoch) and ``OUT/config.json``; ``--resume`` continues from ``OUT/checkpoint``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from tuner.errors import UserError
from tuner.spec.trial_file import config_from_file
from trainables.checkpoint import CHECKPOINT_FILE
from trainables.runner import run_trial


def train_one(config_file: Path, *, overrides: dict, out: Path, resume: bool = False) -> None:
    """Runs one trial of CONFIG (a trial config or a search spec) in the foreground, writing into
    ``out``; ``resume`` continues from ``out``'s checkpoint."""
    config = config_from_file(config_file, overrides)
    out = Path(out)
    checkpoint_dir = out / "checkpoint"
    has_checkpoint = (checkpoint_dir / CHECKPOINT_FILE).is_file()
    if resume and not has_checkpoint:
        raise UserError(f"--resume: no checkpoint in {checkpoint_dir}")
    if has_checkpoint and not resume:
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

    outcome = run_trial(config, report=report, resume_from=checkpoint_dir if resume else None,
                        progress=True)
    tags = "".join(f"; {k}={v}" for k, v in outcome.tags.items())
    print(f"trial {outcome.status} after {outcome.epochs_done} epoch(s){tags}; checkpoint and "
          f"artifacts in {checkpoint_dir}, metrics in {history}")


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
