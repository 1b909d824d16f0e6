"""TrialConfig: every knob of one trial, validated once, at construction.

A config travels one way: CLI / YAML -> SearchSpec -> Optuna -> plain dict -> ``TrialConfig.from_dict``.
The trial never reads the YAML or the command line itself, so everything it needs is a field here.
Every rule lives in ``__post_init__``: a bad value fails when the config is built (on the driver,
before any trial starts), with a message that names the key, the value and the rule.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from trainables.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here)


FINETUNE_MODES = ("full", "head")
LR_SCALING_MODES = ("none", "linear")
CACHE_MODES = ("auto", "off")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class TrialConfig:
    """All the settings of a single training run (docs/trial-settings.md lists them in a table).

    Names of registries (``arch``, ``optimizer``, ``schedule``, ``augmentation``) are checked against
    the registries themselves, so a typo lists the valid names instead of failing an hour later.
    """

    # --- data ---
    train_dir: str
    val_dir: str
    image_size: int = 32  # pixels, square; images under 64 px get the small-input stem
    train_subset: Optional[int] = None  # a fixed, seeded subset of N training images
    lr_scaling: str = "none"  # "linear": lr x subset/full, the journal's rule for subsets
    mean: Optional[tuple[float, float, float]] = None  # None: weights' stats, else the dataset's
    std: Optional[tuple[float, float, float]] = None
    cache: str = "auto"  # use a decoded-image cache beside the data when there is one
    num_workers: int = 0  # DataLoader worker processes; 0 loads in the trial's own process

    # --- model ---
    arch: str = "resnet18"
    width: float = 1.0  # channel multiplier of every resnet stage (1.0 = torchvision's widths)
    growth_rate: Optional[int] = None  # densenets only; None keeps the architecture's default
    pretrained: bool = False  # torchvision's ImageNet weights (downloaded once into TORCH_HOME)
    weights_path: Optional[str] = None  # a local state_dict instead of the download (offline)
    finetune: str = "full"  # "head" trains only the classifier: the journal's weeks-long bug
    head_epochs: int = 0  # two-stage fine-tuning: the classifier alone for N epochs, then every layer
    backbone_lr_mult: float = 1.0  # backbone lr = lr x this (parameter groups; the head keeps lr)

    # --- optimisation ---
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 5e-4
    schedule: str = "dev-decay"
    decay_factor: float = 0.5  # dev-decay: lr multiplier when val accuracy stops improving
    decay_patience: int = 1  # dev-decay: epochs without improvement before a decay
    min_lr: float = 1e-8  # dev-decay: the trial ends itself (converged) once lr falls below this
    warmup_epochs: int = 0  # cosine only: epochs of linear warm-up (per batch) before the decay
    pct_start: float = 0.3  # onecycle: share of the trial's steps spent rising to lr (the peak)
    div_factor: float = 25.0  # onecycle: the first step's lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: the last step's lr = lr / div_factor / final_div_factor
    label_smoothing: float = 0.0  # training loss only: targets (1 - s) one-hot + s / classes
    grad_clip_norm: Optional[float] = None  # clip the global gradient L2 norm to this (null: off)
    ema_decay: float = 0.0  # EMA of the weights per optimizer step (0: off); val_* use the EMA

    # --- augmentation ---
    augmentation: str = "light"
    aug: dict = field(default_factory=dict)  # preset parameters, e.g. {"rotation": 10}
    mixup_alpha: float = 0.0  # MixUp's Beta(alpha, alpha) on the batch (0: off)
    cutmix_alpha: float = 0.0  # CutMix's Beta(alpha, alpha) on the batch (0: off)
    mix_prob: float = 1.0  # share of batches mixed when an alpha is > 0 (both: MixUp or CutMix, 50/50)

    # --- run ---
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch intra-op threads. On a CPU the count decides how convolutions split (and so round) their
    # sums: the same trial at 1 and 2 threads differs from the first step and by points after a few
    # epochs. A search sets it to the trial's CPU share; None keeps the process's own.
    threads: Optional[int] = None
    compile: bool = False  # torch.compile the model (CUDA only; slow to start, fast to run)
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests and diagnostics

    def __post_init__(self) -> None:
        self._check_types()
        self._check_ranges()
        self._check_registered_names()
        self._check_combinations()

    def _check_types(self) -> None:
        """Coerces what YAML and Optuna hand over (``1e-3`` is a string in YAML 1.1, 64.0 an int)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _coerce(f.name, value, str(f.type))
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)

    def _check_ranges(self) -> None:
        _require(self.image_size >= 8, "image_size", self.image_size, "must be >= 8 pixels")
        _require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        _require(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "must be a finite number > 0")
        _require(math.isfinite(self.width) and self.width > 0, "width", self.width, "must be > 0")
        _require(self.momentum >= 0, "momentum", self.momentum, "must be >= 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0 < self.decay_factor < 1, "decay_factor", self.decay_factor, "must be in (0, 1)")
        _require(self.decay_patience >= 0, "decay_patience", self.decay_patience, "must be >= 0")
        _require(self.min_lr >= 0, "min_lr", self.min_lr, "must be >= 0")
        _require(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be >= 0")
        _require(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")
        self._check_recipe_ranges()
        _require(self.seed >= 0, "seed", self.seed, "must be >= 0")
        _require(self.threads is None or self.threads >= 1, "threads", self.threads, "must be >= 1 (or null)")
        for key in ("train_subset", "growth_rate", "max_steps_per_epoch"):
            value = getattr(self, key)
            _require(value is None or value >= 1, key, value, "must be >= 1 (or null)")
        for key in ("mean", "std"):
            value = getattr(self, key)
            _require(value is None or len(value) == 3, key, value, "must hold 3 numbers (R, G, B)")
        _require(self.std is None or min(self.std) > 0, "std", self.std, "must be > 0 per channel")
        _require((self.mean is None) == (self.std is None), "mean/std", (self.mean, self.std),
                 "give both or neither")
        _require(bool(DEVICE_PATTERN.match(self.device)), "device", self.device,
                 "must be auto, cpu, cuda or cuda:N")
        _require_choice("finetune", self.finetune, FINETUNE_MODES)
        _require_choice("lr_scaling", self.lr_scaling, LR_SCALING_MODES)
        _require_choice("cache", self.cache, CACHE_MODES)

    def _check_recipe_ranges(self) -> None:
        _require(0 <= self.label_smoothing < 0.5, "label_smoothing", self.label_smoothing,
                 "must be in [0, 0.5)")
        _require(0 < self.pct_start < 1, "pct_start", self.pct_start, "must be in (0, 1)")
        _require(self.div_factor >= 1, "div_factor", self.div_factor, "must be >= 1")
        _require(self.final_div_factor >= 1, "final_div_factor", self.final_div_factor, "must be >= 1")
        for key in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, key)
            _require(math.isfinite(value) and value >= 0, key, value, "must be >= 0 (0: off)")
        _require(0 <= self.mix_prob <= 1, "mix_prob", self.mix_prob, "must be in [0, 1]")
        _require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "must be in [0, 1) (0: off)")
        _require(self.grad_clip_norm is None or self.grad_clip_norm > 0, "grad_clip_norm",
                 self.grad_clip_norm, "must be > 0 (or null)")
        _require(self.head_epochs >= 0, "head_epochs", self.head_epochs, "must be >= 0")
        _require(self.head_epochs < self.epochs, "head_epochs", self.head_epochs,
                 f"must be < epochs ({self.epochs}); finetune: head trains only the head throughout")
        _require(math.isfinite(self.backbone_lr_mult) and self.backbone_lr_mult > 0, "backbone_lr_mult",
                 self.backbone_lr_mult, "must be > 0")

    def _check_registered_names(self) -> None:
        # Imported here to keep torch out of a light import: config.py is imported by the driver early.
        from trainables.models import MODELS  # torch: only once a config is checked
        from trainables.optim import OPTIMIZERS, SCHEDULES  # (same)
        from trainables.transforms import AUGMENTATIONS  # (same)

        for key, registry in (
            ("arch", MODELS),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("augmentation", AUGMENTATIONS),
        ):
            try:
                registry.get(getattr(self, key))
            except KeyError as err:
                raise ConfigError(f"{key}: {err.args[0]}") from None
        try:
            AUGMENTATIONS.get(self.augmentation).check_params(self.aug)
        except ValueError as err:
            raise ConfigError(f"{err} (augmentation {self.augmentation})") from None

    def _check_combinations(self) -> None:
        from trainables.models import check_backbone_settings  # here: keeps torch out of importing config

        check_backbone_settings(self.arch, width=self.width, growth_rate=self.growth_rate,
                                pretrained=self.pretrained)
        if self.finetune == "head" and self.head_epochs:
            raise ConfigError(f"head_epochs: finetune: head already trains only the head for the whole "
                              f"trial; use one or the other, got head_epochs={self.head_epochs}")
        if self.finetune == "head" and self.backbone_lr_mult != 1.0:
            raise ConfigError(f"backbone_lr_mult: finetune: head never trains the backbone, got "
                              f"{self.backbone_lr_mult}")
        if self.weights_path is not None and not self.pretrained:
            raise ConfigError(f"weights_path: needs pretrained: true, got {self.weights_path!r} "
                              "with pretrained: false")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """Builds a config from a flat dict, rejecting keys this version does not know."""
        if not isinstance(values, dict):
            raise ConfigError(f"trial settings must be a mapping, got {type(values).__name__}")
        values = fold_dotted_keys(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown trial setting(s) {', '.join(unknown)}; valid settings: {', '.join(sorted(known))}"
            )
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and f.name not in values)
        if missing:
            raise ConfigError(f"missing trial setting(s) {', '.join(missing)} (the data folders)")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON- and torch.load(weights_only)-safe dict that round-trips through from_dict."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def fold_dotted_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``{"aug.rotation": 10}`` -> ``{"aug": {"rotation": 10}}``: searched preset parameters arrive flat."""
    folded: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(key, str) and "." in key:
            head, tail = key.split(".", 1)
            nested = dict(folded.get(head) or {})
            nested[tail] = value
            folded[head] = nested
        elif isinstance(value, dict) and isinstance(folded.get(key), dict):
            folded[key] = {**value, **folded[key]}
        else:
            folded[key] = value
    return folded


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Checks ``value`` against a field's annotation (a string under postponed annotations)."""
    optional = annotation.startswith("Optional[")
    kind = annotation[len("Optional["):-1] if optional else annotation
    if value is None:
        _require(optional, key, value, f"must be a {kind}, not null")
        return None
    if kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), key, value,
                 "must be a number")
        return float(value)
    if kind == "int":
        integral = isinstance(value, float) and value.is_integer()
        _require((isinstance(value, int) and not isinstance(value, bool)) or integral, key, value,
                 "must be a whole number")
        return int(value)
    if kind == "bool":
        _require(isinstance(value, bool), key, value, "must be true or false")
        return value
    if kind == "str":
        _require(isinstance(value, str), key, value, "must be a string")
        return value
    if kind == "dict":
        _require(isinstance(value, dict), key, value, "must be a mapping")
        return value
    # tuple[float, float, float]: mean / std
    _require(isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ), key, value, "must be a list of numbers")
    return tuple(float(v) for v in value)


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {rule}, got {value!r}")


def _require_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, value, f"must be one of {', '.join(choices)}")
