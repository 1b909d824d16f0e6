"""One whole trial, without Ray: set up, resume, train epoch by epoch, report, checkpoint, finish.

``run_trial`` is shared by the Ray Tune adapter (``trainables.trial``), ``tuner train`` and the
diagnostics. After every epoch it calls ``report(metrics, checkpoint_dir)``:

- ``metrics``: train_loss, train_acc, val_loss, val_acc, val_top5, lr (the rate at the epoch's first
  step; per-batch schedules move it within the epoch), epoch, epoch_time_s (train + validation,
  seconds), images_per_s (training throughput),
  skipped_images (unreadable files met in the epoch), status (running | completed | converged |
  diverged) and final (True only in the trial's last report). With ``ema_decay`` > 0 the val_*
  numbers are the weight average's, and val_acc_raw / val_loss_raw the raw weights'.
- ``checkpoint_dir``: a temporary directory, valid only during the call (copy it or lose it), that
  holds ``checkpoint.pt`` and ``artifacts/``: ``config.json`` (the resolved TrialConfig),
  ``summary.json`` (status, epoch, tags, normalisation, effective lr), ``per_class.csv`` and
  ``confusion.csv`` in every checkpoint, plus ``confusion.png`` and ``mistakes.png`` (the error
  gallery) in the LAST one. Ray persists checkpoint directories to the search's storage, so the
  driver finds a trial's artifacts in the checkpoint of its last result, from any node.

A trial that diverges (NaN/inf training loss) reports once more, ``status: diverged`` and ``final``,
with the last finished epoch's validation numbers and NO checkpoint (its weights are NaN): its
artifacts are those of the previous epoch's checkpoint. A trial that the scheduler stops never sees
its last report coming: its latest checkpoint holds the tables but no figures.

Resume is exact: the data order and every augmentation are functions of (seed, epoch, index) (see
``trainables.data``), global RNGs are re-seeded from (seed, epoch) before each epoch, and model,
optimizer, schedule and RNG states come back from the checkpoint.
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from trainables.artifacts import GALLERY_SIZE, write_figures, write_tables
from trainables.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainables.config import TrialConfig
from trainables.engine import Diverged, EvalStats, TrainStats
from trainables.trial_state import TrialState
from trainables.status import COMPLETED, CONVERGED, DIVERGED, RUNNING

log = logging.getLogger(__name__)

# Statuses a trial can end with (the MLflow tag ``tuner.status`` uses the same words).

Reporter = Callable[[dict, Optional[Path]], None]


@dataclass
class TrialOutcome:
    status: str
    epochs_done: int
    metrics: dict
    tags: dict = field(default_factory=dict)  # e.g. {"tuner.finetune": "head-only"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_metrics(epoch: int, lr: float, train: TrainStats, val: EvalStats,
                  raw: Optional[EvalStats] = None) -> dict:
    extra = {"val_acc_raw": raw.accuracy, "val_loss_raw": raw.loss} if raw is not None else {}
    return {
        **extra,
        "epoch": epoch,
        "train_loss": train.loss,
        "train_acc": train.accuracy,
        "val_loss": val.loss,
        "val_acc": val.accuracy,
        "val_top5": val.top5,
        "lr": lr,
        "epoch_time_s": train.seconds + val.seconds,
        "images_per_s": train.images_per_s,
        "skipped_images": train.skipped + val.skipped,
    }


def run_trial(
    config: TrialConfig,
    *,
    report: Reporter,
    resume_from: Optional[Path] = None,
    progress: bool = False,
) -> TrialOutcome:
    """Trains ``config`` to the end (its epochs, dev-decay convergence or divergence)."""
    content = load_checkpoint(resume_from) if resume_from is not None else None
    state = TrialState(config, normalisation=content["normalisation"] if content else None)
    start_epoch, history = 0, []
    if content is not None:
        start_epoch, history = state.restore(content, source=resume_from)
        log.info("resumed from %s after epoch %d", resume_from, start_epoch)
        if history and history[-1].get("status") in (CONVERGED, DIVERGED):
            return TrialOutcome(history[-1]["status"], start_epoch, history[-1], state.tags)
    metrics = history[-1] if history else {}
    for epoch in range(start_epoch + 1, config.epochs + 1):
        # Re-seeding from (seed, epoch) makes epoch k identical whether or not the trial resumed.
        seed_everything(config.seed * 1_000_003 + epoch)
        lr = state.current_lr()
        try:
            train = state.train_epoch(epoch, progress=progress)
        except Diverged as err:
            log.warning("trial diverged in epoch %d: %s", epoch, err)
            metrics = _diverged_metrics(metrics, epoch, lr)
            report(metrics, None)
            return TrialOutcome(DIVERGED, epoch - 1, metrics, state.tags)
        val, raw = state.evaluate(keep_mistakes=GALLERY_SIZE)
        state.schedule.step(val.accuracy)
        converged = state.schedule.converged(state.optimizer)
        final = converged or epoch == config.epochs
        metrics = epoch_metrics(epoch, lr, train, val, raw)
        metrics["status"] = (CONVERGED if converged else COMPLETED) if final else RUNNING
        metrics["final"] = final
        history.append(dict(metrics))
        _checkpoint_and_report(state, report, epoch, history, val, final=final)
        if converged:
            log.info("dev-decay: lr %.3g < min_lr %.3g, the trial ends itself", state.current_lr(),
                     config.min_lr)
            return TrialOutcome(CONVERGED, epoch, metrics, state.tags)
    return TrialOutcome(metrics.get("status", COMPLETED), config.epochs, metrics, state.tags)


def _diverged_metrics(previous: dict, epoch: int, lr: float) -> dict:
    # The scheduler needs the metric in every result: a diverged trial scores no better than its
    # last finished epoch (or 0 when it diverged in the first one).
    return {
        "val_acc": 0.0, "val_top5": 0.0, "val_loss": float("nan"), "train_acc": 0.0,
        **{k: v for k, v in previous.items() if k not in ("status", "final")},
        "epoch": epoch, "lr": lr, "train_loss": float("nan"), "status": DIVERGED, "final": True,
    }


def _checkpoint_and_report(state: TrialState, report: Reporter, epoch: int, history: list[dict],
                           val: EvalStats, *, final: bool) -> None:
    metrics = history[-1]
    with tempfile.TemporaryDirectory(prefix="tuner-ckpt-") as name:
        directory = Path(name)
        save_checkpoint(directory, **state.checkpoint_content(epoch, history))
        summary = {"status": metrics["status"], "epoch": epoch, "final": final, "tags": state.tags,
                   "effective_lr": state.lr, "normalisation": state.normalisation,
                   "caches": state.splits.caches}
        write_tables(directory, config=state.config.to_dict(), summary=summary,
                     class_names=state.class_names, stats=val)
        if final:
            write_figures(directory, class_names=state.class_names, stats=val,
                          val_paths=state.splits.val_paths)
        report(metrics, directory)


__all__ = ["run_trial", "TrialOutcome", "Reporter", "CheckpointError", "seed_everything"]
