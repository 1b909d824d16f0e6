"""The validated form of a search spec: frozen dataclasses, built only by ``tuner.spec.load``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tuner.spec.space import Param
from trainables.config import TrialConfig

MODES = ("max", "min")
TOP_KEYS = {
    "name", "metric", "mode", "data", "fixed", "space", "sampler", "scheduler", "budget",
    "resources", "points_to_evaluate", "storage", "tracking",
}
DATA_KEYS = {"train", "val", "test", "image_size"}


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"  # an entry of tuner.search.samplers.SAMPLERS
    seed: Optional[int] = 0
    options: dict = field(default_factory=dict)  # checked against the entry, defaults filled in


@dataclass(frozen=True)
class SchedulerSpec:
    name: str = "asha"  # an entry of tuner.search.schedulers.SCHEDULERS
    options: dict = field(default_factory=dict)  # checked against the entry, defaults filled in


@dataclass(frozen=True)
class BudgetSpec:
    num_samples: int = 8
    max_concurrent: int = 2
    time_budget_s: Optional[float] = None
    max_failures: int = 3  # retries of a trial whose process or node died, from its last checkpoint


@dataclass(frozen=True)
class ResourceSpec:
    cpu: float = 1
    gpu: float = 0


@dataclass(frozen=True)
class DataSpec:
    train: str
    val: str
    test: Optional[str] = None
    image_size: int = 32


@dataclass(frozen=True)
class SearchSpec:
    name: str
    source: str  # the file it came from, for messages
    data: DataSpec
    fixed: dict
    space: tuple[Param, ...]
    metric: str = "val_acc"
    mode: str = "max"
    sampler: SamplerSpec = SamplerSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    budget: BudgetSpec = BudgetSpec()
    resources: ResourceSpec = ResourceSpec()
    points_to_evaluate: tuple[dict, ...] = ()
    storage: Optional[str] = None  # Optuna study URL; default: SQLite beside the results
    tracking: Optional[str] = None  # MLflow tracking URI; --tracking-uri and $TUNER_TRACKING_URI win

    @property
    def epochs(self) -> int:
        return int(self.fixed.get("epochs", TrialConfig.__dataclass_fields__["epochs"].default))

    def base_config(self) -> dict:
        """The fixed part of every trial's TrialConfig dict (data paths made absolute). A trial's
        torch threads are its whole-CPU share, written out so that the value is recorded with the
        trial and `tuner train SPEC` reproduces it (results depend on the thread count)."""
        threads = {"threads": int(self.resources.cpu)} if self.resources.cpu >= 1 else {}
        return {
            "train_dir": self.data.train,
            "val_dir": self.data.val,
            "image_size": self.data.image_size,
            **threads,
            **self.fixed,
        }
