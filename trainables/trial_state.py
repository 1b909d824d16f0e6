"""TrialState: the model, data, optimizer and schedule of one trial, built from a TrialConfig.

Speed on CUDA: uint8 batches from the loader, finished (normalised, erased) on the device
(``finish_train``/``finish_eval``), cudnn.benchmark, channels_last weights and inputs, bf16 autocast
(in the engine), pinned host memory with non_blocking copies, persistent loader workers and, with
``compile: true``, torch.compile. On CPU none of these apply and ``compile`` is ignored with a warning (inductor needs a
C++ toolchain there and rarely pays off for a trial).

The recipe knobs meet here: parameter groups (``backbone_lr_mult``), two-stage fine-tuning
(``head_epochs``: the backbone is frozen, BatchNorm statistics included, for the first N epochs; a
resumed trial finds its phase from the epoch number), the per-batch schedule and the weight average
(stepped after every optimizer step), MixUp/CutMix and label smoothing (in the engine's step).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from trainables.checkpoint import CheckpointError, restore_rng_state, rng_state
from trainables.config import ConfigError, TrialConfig
from trainables.data import (RobustImageFolder, Splits, build_splits, class_counts,
                             estimate_channel_stats, make_loader)
from trainables.ema import WeightAverage
from trainables.engine import EvalStats, TrainStats, evaluate, train_one_epoch
from trainables.mixing import BatchMixer
from trainables.models import (build_model, default_weights_normalisation, freeze_all_but_head,
                               frozen_modules, set_backbone_trainable, split_head_and_backbone)
from trainables.optim import build_optimizer, build_schedule
from trainables.batch_finish import BatchFinish
from trainables.transforms import (EVAL_CROP, build_batch_tail, build_eval_pixels, build_train_pixels,
                                   crops_can_move_to_device, device_crop_op,
                                   erasing_probability)

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"  # channel mean/std written by `tuner data stats` beside train/ and val/
EVAL_BATCH = 256  # validation batch size floor (no gradients: larger batches are cheap)
HEAD_ONLY_TAG = {"tuner.finetune": "head-only"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} asked for, but this machine has no usable CUDA GPU")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {name} asked for, but this machine has "
                          f"{torch.cuda.device_count()} GPU(s)")
    return device


def resolve_normalisation(config: TrialConfig) -> dict:
    """Mean/std: explicit config, else the pretrained weights', else the dataset's own statistics.

    The dataset's come from ``stats.json`` beside the train folder when there is one, else from a
    seeded sample of training images (and a hint to run ``tuner data stats``).
    """
    if config.mean is not None and config.std is not None:
        return {"mean": list(config.mean), "std": list(config.std), "source": "config"}
    if config.pretrained:
        weights = default_weights_normalisation(config.arch)
        if weights is not None:
            return {"mean": weights[0], "std": weights[1], "source": "weights"}
    stats_path = Path(config.train_dir).parent / STATS_FILE
    if stats_path.is_file():
        try:
            stats = json.loads(stats_path.read_text())
            return {"mean": list(stats["mean"]), "std": list(stats["std"]), "source": str(stats_path)}
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s unreadable (%s): estimating mean/std from images", stats_path, err)
    log.warning("no %s beside %s: estimating mean/std from a sample of its images "
                "(`tuner data stats` computes them once, from all)", STATS_FILE, config.train_dir)
    paths = RobustImageFolder(config.train_dir).paths
    mean, std = estimate_channel_stats(paths, image_size=config.image_size, seed=config.seed)
    return {"mean": mean, "std": std, "source": "sample"}


class TrialState:
    """Everything a trial holds between epochs; loaders are built once (workers persist)."""

    def __init__(self, config: TrialConfig, *, normalisation: Optional[dict] = None,
                 crops_on_device: Optional[bool] = None) -> None:
        """``crops_on_device``: leave the preset's crops and resizes to the device when the training
        split is read from the cache and the preset allows it (device_crops.py); by default on CUDA only."""
        self.config = config
        self.device = resolve_device(config.device)
        if config.threads is not None:  # before any work: the thread count shapes every result
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # model initialisation
        if crops_on_device is None:
            crops_on_device = self.device.type == "cuda"  # a CPU crops faster per sample
        self.splits = self._build_splits(normalisation, crops_on_device)
        self.class_names = [c for c, _ in sorted(self.splits.class_to_idx.items(), key=lambda kv: kv[1])]
        self.num_classes = len(self.class_names)
        # Images per class index of what this trial trains on (after train_subset): recorded in every
        # checkpoint, so a prediction can later re-weight the softmax to another class prior.
        self.class_counts = class_counts(self.splits.train, self.num_classes)
        self.model = build_model(
            config.arch, num_classes=self.num_classes, image_size=config.image_size,
            width=config.width, growth_rate=config.growth_rate, pretrained=config.pretrained,
            weights_path=config.weights_path,
        ).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tags: dict = {}
        self.frozen: list[torch.nn.Module] = []
        trained = self._select_trained_parameters()
        self.lr = self._effective_lr()
        self.optimizer = build_optimizer(
            self._parameter_groups(trained), name=config.optimizer, lr=self.lr,
            momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay,
        )
        self.forward = self._maybe_compile()
        self.train_loader, self.val_loader = self._build_loaders()
        self.schedule = build_schedule(
            self.optimizer, name=config.schedule, epochs=config.epochs,
            steps_per_epoch=len(self.train_loader), factor=config.decay_factor,
            patience=config.decay_patience, min_lr=config.min_lr, warmup_epochs=config.warmup_epochs,
            pct_start=config.pct_start, div_factor=config.div_factor,
            final_div_factor=config.final_div_factor,
        )
        self.ema = WeightAverage(self.model, decay=config.ema_decay) if config.ema_decay > 0 else None
        self.mixer = None
        if (config.mixup_alpha > 0 or config.cutmix_alpha > 0) and config.mix_prob > 0:
            self.mixer = BatchMixer(num_classes=self.num_classes, mixup_alpha=config.mixup_alpha,
                                    cutmix_alpha=config.cutmix_alpha, mix_prob=config.mix_prob,
                                    seed=config.seed)

    def _build_splits(self, normalisation: Optional[dict], crops_on_device: bool) -> Splits:
        config = self.config
        # A resumed trial keeps the statistics it started with, whatever changed on disk since.
        self.normalisation = normalisation or resolve_normalisation(config)
        mean, std = self.normalisation["mean"], self.normalisation["std"]
        # The loaders hand over uint8; conversion, normalisation and erasing run per batch on the device.
        # On a GPU, a trial reading the cache also leaves its crops and resizes to the device.
        crops_on_device = crops_on_device and crops_can_move_to_device(config.augmentation)
        device_crops = {"crop_size": config.image_size,
                        "crop_op": device_crop_op(config.augmentation)} if crops_on_device else {}
        self.finish_train = BatchFinish(mean, std, erasing=erasing_probability(config.aug), seed=config.seed,
                                        tail=build_batch_tail(config.augmentation, config.aug), **device_crops)
        self.finish_eval = BatchFinish(mean, std)
        return build_splits(
            config.train_dir, config.val_dir,
            train_transform=build_train_pixels(config.augmentation, config.image_size, config.aug),
            eval_transform=build_eval_pixels(config.image_size, float(config.aug.get(EVAL_CROP, 1.0))),
            subset=config.train_subset, seed=config.seed,
            cache_size=config.image_size if config.cache == "auto" else None,
            cached_train_transform=build_train_pixels(config.augmentation, config.image_size, config.aug,
                                                      crops_on_device=True) if crops_on_device else None,
        )

    def _select_trained_parameters(self) -> list[torch.nn.Parameter]:
        if self.config.finetune == "full":
            return list(self.model.parameters())
        head = freeze_all_but_head(self.model, self.config.arch)
        self.frozen = frozen_modules(self.model, self.config.arch)
        self.tags = dict(HEAD_ONLY_TAG)
        total = sum(p.numel() for p in self.model.parameters())
        log.warning(
            "finetune=head: ONLY THE CLASSIFIER HEAD IS TRAINED (%d of %d parameters); the backbone "
            "and its BatchNorm statistics stay frozen%s. Use finetune=full unless this is what you want.",
            sum(p.numel() for p in head), total,
            "" if self.config.pretrained else ", and they are RANDOM (pretrained: false)",
        )
        return head

    def _parameter_groups(self, trained: list[torch.nn.Parameter]) -> list:
        """One group, or (head at lr, backbone at lr x backbone_lr_mult): the head's group first,
        so the reported ``lr`` is the configured rate's trajectory."""
        if self.config.backbone_lr_mult == 1.0:
            return trained
        head, backbone = split_head_and_backbone(self.model, self.config.arch)
        return [{"params": head}, {"params": backbone, "lr": self.lr * self.config.backbone_lr_mult}]

    def _set_phase(self, epoch: int) -> None:
        """head_epochs: epochs 1..N train the classifier alone, later ones every layer."""
        if not self.config.head_epochs:
            return
        head_only = epoch <= self.config.head_epochs
        if epoch in (1, self.config.head_epochs + 1):
            log.info("head_epochs=%d: epoch %d trains %s", self.config.head_epochs, epoch,
                     "the classifier alone" if head_only else "every layer")
        set_backbone_trainable(self.model, self.config.arch, not head_only)
        self.frozen = frozen_modules(self.model, self.config.arch) if head_only else []

    def _effective_lr(self) -> float:
        config = self.config
        if config.lr_scaling == "linear" and config.train_subset:
            # The journal's rule: a subset of N images takes lr x N / full.
            return config.lr * config.train_subset / self.splits.full_train_size
        return config.lr

    def _maybe_compile(self):
        if not self.config.compile:
            return self.model
        if self.device.type != "cuda":
            log.warning("compile: true is ignored on %s (torch.compile is used on CUDA only)",
                        self.device)
            return self.model
        return torch.compile(self.model)

    def _build_loaders(self):
        config, pin = self.config, self.device.type == "cuda"
        limit = None if config.max_steps_per_epoch is None else config.max_steps_per_epoch * config.batch_size
        train = make_loader(self.splits.train, batch_size=config.batch_size, shuffle=True,
                            num_workers=config.num_workers, seed=config.seed, pin_memory=pin, limit=limit)
        val = make_loader(self.splits.val, batch_size=max(config.batch_size, EVAL_BATCH), shuffle=False,
                          num_workers=config.num_workers, seed=config.seed, pin_memory=pin)
        return train, val

    def current_lr(self) -> float:
        return self.schedule.current_lr(self.optimizer)

    def train_epoch(self, epoch: int, *, progress: bool = False) -> TrainStats:
        self.train_loader.sampler.set_epoch(epoch)
        self._set_phase(epoch)
        if self.mixer is not None:
            self.mixer.set_epoch(epoch)
        self.finish_train.set_epoch(epoch)
        with _EpochBar(progress, epoch, self.config.epochs, len(self.train_loader.sampler)) as bar:
            return train_one_epoch(self.forward, self.train_loader, self.optimizer, self.device,
                                   frozen=self.frozen, progress=bar,
                                   label_smoothing=self.config.label_smoothing, mix=self.mixer,
                                   grad_clip_norm=self.config.grad_clip_norm, after_step=self._after_step,
                                   finish=self.finish_train)

    def _after_step(self) -> None:
        self.schedule.step_batch()
        if self.ema is not None:
            self.ema.update(self.model)

    def evaluate(self, *, keep_mistakes: int = 0) -> tuple[EvalStats, Optional[EvalStats]]:
        """(the reported weights' stats, the raw weights' stats when those differ: EMA on, else None)."""
        raw = evaluate(self.forward, self.val_loader, self.device, num_classes=self.num_classes,
                       keep_mistakes=0 if self.ema is not None else keep_mistakes, finish=self.finish_eval)
        if self.ema is None:
            return raw, None
        averaged = evaluate(self.ema.model, self.val_loader, self.device, num_classes=self.num_classes,
                            keep_mistakes=keep_mistakes, finish=self.finish_eval)
        return averaged, raw

    def checkpoint_content(self, epoch: int, history: list[dict]) -> dict:
        """``model``: the raw weights (training resumes from them); ``ema``: the averaged ones, which
        inference prefers when present. ``class_counts``: training images per class index (a plain
        list of ints); checkpoints written before it was recorded lack it, and resume ignores it."""
        extra = {"ema": self.ema.state_dict()} if self.ema is not None else {}
        return {
            **extra,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": epoch,
            "rng": rng_state(),
            "history": history,
            "config": self.config.to_dict(),
            "class_to_idx": self.splits.class_to_idx,
            "normalisation": self.normalisation,
            "class_counts": list(self.class_counts),
        }

    def restore(self, content: dict, *, source) -> tuple[int, list[dict]]:
        if content.get("class_to_idx") != self.splits.class_to_idx:
            raise CheckpointError(f"{source}: its classes differ from those of {self.config.train_dir}")
        try:
            self.model.load_state_dict(content["model"])
            self.optimizer.load_state_dict(content["optimizer"])
            if self.ema is not None:
                self.ema.load_state_dict(content["ema"])
        except (RuntimeError, ValueError, KeyError) as err:
            saved = content.get("config", {})
            differing = sorted(k for k in ("arch", "width", "growth_rate", "finetune", "optimizer",
                                           "backbone_lr_mult", "ema_decay")
                               if saved.get(k) != getattr(self.config, k))
            raise CheckpointError(
                f"{source}: does not fit this trial's model/optimizer (differing settings: "
                f"{', '.join(differing) or 'none'}; {str(err).splitlines()[0]})"
            ) from None
        self.schedule.load_state_dict(content["schedule"])
        restore_rng_state(content["rng"])
        return int(content["epoch"]), list(content["history"])


class _EpochBar:
    """A tqdm bar over the epoch's training images (``tuner train``); a no-op when disabled."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, total: int) -> None:
        self.enabled, self.bar = enabled, None
        self.desc, self.total = f"epoch {epoch}/{epochs}", total

    def __enter__(self):
        if not self.enabled:
            return None
        from tqdm import tqdm  # only `tuner train` shows bars; trials under Ray stay quiet

        self.bar = tqdm(total=self.total, desc=self.desc, unit="img", leave=True, dynamic_ncols=True)
        return self.bar.update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
