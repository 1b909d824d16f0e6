"""One whole trial, without Ray: set up, resume, train epoch by epoch, report, checkpoint, finish.

``run_trial`` is shared by the Ray Tune adapter (``trainables.trial``), ``tuner train`` and the
diagnostics. It hands each epoch's metrics and a freshly written checkpoint directory to ``report``;
what the caller does with them (``tune.report``, a local folder, nothing) is the caller's business.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from trainables.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from trainables.config import TrialConfig
from trainables.data import Splits, build_splits, make_loader
from trainables.engine import Diverged, EvalStats, evaluate, train_one_epoch
from trainables.models import build_model, classifier_parameters, default_weights_normalisation
from trainables.optim import build_optimizer, build_schedule
from trainables.transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"  # channel mean/std written by `tuner data stats` beside train/ and val/
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Statuses a trial can end with (the MLflow tag ``tuner.status`` uses the same words).
COMPLETED, CONVERGED, DIVERGED = "completed", "converged", "diverged"

Reporter = Callable[[dict, Optional[Path]], None]


@dataclass
class TrialOutcome:
    status: str
    epochs_done: int
    metrics: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_normalisation(config: TrialConfig) -> tuple[list[float], list[float], str]:
    """Mean/std: explicit config, else the pretrained weights', else the dataset's stats.json."""
    if config.mean is not None and config.std is not None:
        return list(config.mean), list(config.std), "config"
    if config.pretrained:
        weights = default_weights_normalisation(config.arch)
        if weights is not None:
            return weights[0], weights[1], "weights"
    stats_path = Path(config.train_dir).parent / STATS_FILE
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        return list(stats["mean"]), list(stats["std"]), str(stats_path)
    log.warning("no %s beside %s: normalising with ImageNet statistics", STATS_FILE, config.train_dir)
    return list(IMAGENET_MEAN), list(IMAGENET_STD), "imagenet-default"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrialState:
    """Model, data and optimiser of one trial, built from a TrialConfig."""

    def __init__(self, config: TrialConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        mean, std, self.normalisation_source = resolve_normalisation(config)
        self.mean, self.std = mean, std
        eval_crop = float(config.aug.get("eval_crop", 1.0))
        self.splits: Splits = build_splits(
            config.train_dir,
            config.val_dir,
            train_transform=build_train_transform(
                config.augmentation, config.image_size, mean, std, config.aug
            ),
            eval_transform=build_eval_transform(config.image_size, mean, std, eval_crop),
            subset=config.train_subset,
            seed=config.seed,
        )
        self.num_classes = len(self.splits.class_to_idx)
        self.model = build_model(
            config.arch,
            num_classes=self.num_classes,
            image_size=config.image_size,
            width=config.width,
            growth_rate=config.growth_rate,
            pretrained=config.pretrained,
            weights_path=config.weights_path,
        ).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.model = self.model.to(memory_format=torch.channels_last)
        self.trained_parameters = self._select_trained_parameters()
        self.lr = self._effective_lr()
        self.optimizer = build_optimizer(
            self.trained_parameters,
            name=config.optimizer,
            lr=self.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
        self.schedule = build_schedule(
            self.optimizer,
            name=config.schedule,
            epochs=config.epochs,
            factor=config.decay_factor,
            patience=config.decay_patience,
            min_lr=config.min_lr,
            warmup_epochs=config.warmup_epochs,
        )
        self.forward = torch.compile(self.model) if config.compile else self.model

    def _select_trained_parameters(self) -> list[torch.nn.Parameter]:
        if self.config.finetune == "full":
            return list(self.model.parameters())
        head = classifier_parameters(self.model)
        head_ids = {id(p) for p in head}
        for parameter in self.model.parameters():
            parameter.requires_grad_(id(parameter) in head_ids)
        log.warning(
            "finetune=head: ONLY THE CLASSIFIER HEAD IS TRAINED (%d of %d tensors); the backbone "
            "stays frozen. Use finetune=full unless this is what you want.",
            len(head), len(list(self.model.parameters())),
        )
        return head

    def _effective_lr(self) -> float:
        config = self.config
        if config.lr_scaling == "linear" and config.train_subset:
            # The journal's rule: a subset of N images takes lr x N / full.
            return config.lr * config.train_subset / self.splits.full_train_size
        return config.lr

    def loaders(self, epoch: int):
        pin = self.device.type == "cuda"
        train = make_loader(
            self.splits.train, batch_size=self.config.batch_size, shuffle=True,
            num_workers=self.config.num_workers, seed=self.config.seed * 100_003 + epoch,
            pin_memory=pin,
        )
        val = make_loader(
            self.splits.val, batch_size=max(self.config.batch_size, 64), shuffle=False,
            num_workers=self.config.num_workers, seed=0, pin_memory=pin,
        )
        return train, val

    def checkpoint_content(self, epoch: int, history: list[dict]) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": epoch,
            "rng": rng_state(),
            "history": history,
            "config": self.config.to_dict(),
            "class_to_idx": self.splits.class_to_idx,
            "normalisation": {"mean": self.mean, "std": self.std},
        }

    def restore(self, content: dict) -> tuple[int, list[dict]]:
        self.model.load_state_dict(content["model"])
        self.optimizer.load_state_dict(content["optimizer"])
        self.schedule.load_state_dict(content["schedule"])
        restore_rng_state(content["rng"])
        return int(content["epoch"]), list(content["history"])


def epoch_metrics(state: TrialState, epoch: int, train, val: EvalStats) -> dict:
    return {
        "epoch": epoch,
        "train_loss": train.loss,
        "train_acc": train.accuracy,
        "val_loss": val.loss,
        "val_acc": val.accuracy,
        "val_top5": val.top5,
        "lr": state.schedule.current_lr(state.optimizer),
        "epoch_time_s": train.seconds,
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
    """Trains ``config`` to the end (epochs, dev-decay convergence or divergence)."""
    state = TrialState(config)
    start_epoch, history = 0, []
    if resume_from is not None:
        start_epoch, history = state.restore(load_checkpoint(resume_from, state.device))
        log.info("resumed from %s after epoch %d", resume_from, start_epoch)
    metrics = history[-1] if history else {}
    for epoch in range(start_epoch + 1, config.epochs + 1):
        # Re-seeding from (seed, epoch) makes epoch k identical whether or not the trial resumed.
        seed_everything(config.seed * 1_000_003 + epoch)
        train_loader, val_loader = state.loaders(epoch)
        try:
            train = train_one_epoch(
                state.forward, train_loader, state.optimizer, state.device,
                max_steps=config.max_steps_per_epoch, progress=_bar(progress, epoch, config),
            )
        except Diverged as err:
            log.warning("trial diverged in epoch %d: %s", epoch, err)
            # The scheduler needs the metric in every result: a diverged trial scores no better
            # than its last finished epoch (or 0 when it diverged in the first one).
            metrics = {
                "val_acc": 0.0, **metrics, "epoch": epoch, "status": DIVERGED,
                "train_loss": float("nan"),
            }
            report(metrics, None)
            return TrialOutcome(DIVERGED, epoch - 1, metrics)
        val = evaluate(state.forward, val_loader, state.device, num_classes=state.num_classes)
        state.schedule.step(val.accuracy)
        metrics = epoch_metrics(state, epoch, train, val)
        converged = state.schedule.converged(state.optimizer)
        final = converged or epoch == config.epochs
        metrics["status"] = (CONVERGED if converged else COMPLETED) if final else "running"
        history.append(dict(metrics))
        with tempfile.TemporaryDirectory(prefix="tuner-ckpt-") as directory:
            save_checkpoint(directory, **state.checkpoint_content(epoch, history))
            report(metrics, Path(directory))
        if converged:
            return TrialOutcome(CONVERGED, epoch, metrics)
    return TrialOutcome(metrics.get("status", COMPLETED), config.epochs, metrics)


def _bar(enabled: bool, epoch: int, config: TrialConfig):
    if not enabled:
        return None
    from tqdm import tqdm  # only `tuner train` shows bars; trials under Ray stay quiet

    bar = tqdm(desc=f"epoch {epoch}/{config.epochs}", unit="img", leave=True)
    return bar.update
