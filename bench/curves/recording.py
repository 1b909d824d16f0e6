"""The recorded-curve table: which configurations are recorded, the frozen space, the Parquet file.

A recording is planned from a search spec (``search_spaces/recipe.yaml``): its ``space:`` is hashed
(``space_sha256``) and so are the fixed trial settings the recording trains with
(``settings_sha256``). The plan is deterministic: the spec's ``points_to_evaluate`` first (the
search starts there, so the surrogate should know them), then ``random_configs`` points drawn by
Optuna's RandomSampler through the same define-by-run function the search uses (conditional
parameters included), then ``repeats`` of the first random points with other training seeds (their
spread is the surrogate's noise). Each planned configuration has an id (hash of params and seed).

The table has one row per (configuration, epoch); the plan's hashes and settings travel in the
Parquet schema metadata (key ``tuner.recording``), so a reader sees which space the curves are of
and a resumed recording refuses to mix two spaces.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = ROOT / "search_spaces" / "recipe.yaml"
DEFAULT_TABLE = ROOT / "bench" / "curves" / "curves.parquet"
METADATA_KEY = b"tuner.recording"
FORMAT = "tuner-curves/1"
EPOCH_COLUMNS = ("val_acc", "val_loss", "train_loss", "train_acc", "epoch_time_s", "cpu_s")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_raw_spec(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def space_sha256(raw_spec: dict) -> str:
    """The hash of a spec's ``space:`` as written (key order and comments do not count)."""
    return sha256_of(raw_spec.get("space", {}))


@dataclass(frozen=True)
class PlannedConfig:
    config_id: str
    origin: str  # prior (points_to_evaluate) | random | repeat (another training seed)
    seed: int  # TrialConfig.seed: data order, augmentation, initialisation
    params: dict  # the searched parameters, flat ("aug.min_scale"), only the active ones


@dataclass(frozen=True)
class RecordingPlan:
    spec_path: str
    raw_space: dict
    settings: dict  # fixed trial settings without data paths (epochs, train_subset, width, ...)
    configs: tuple[PlannedConfig, ...]

    @property
    def space_sha256(self) -> str:
        return sha256_of(self.raw_space)

    @property
    def settings_sha256(self) -> str:
        return sha256_of(self.settings)

    @property
    def epochs(self) -> int:
        return int(self.settings["epochs"])

    def metadata(self, *, recorded: int, extra: Optional[dict] = None) -> dict:
        return {
            "format": FORMAT, "spec": self.spec_path, "space": self.raw_space,
            "space_sha256": self.space_sha256, "settings": self.settings,
            "settings_sha256": self.settings_sha256, "epochs": self.epochs,
            "configs_planned": len(self.configs), "configs_recorded": recorded,
            "complete": recorded >= len(self.configs), **(extra or {}),
        }


def config_id(params: dict, seed: int) -> str:
    return sha256_of({"params": params, "seed": seed})[:12]


def plan_recording(spec_path: str | Path, *, random_configs: int, repeats: int, draw_seed: int = 0,
                   overrides: Optional[dict] = None) -> RecordingPlan:
    """The deterministic list of configurations to record (see the module docstring)."""
    import optuna

    from tuner.search.space import define_by_run
    from tuner.spec import parse_spec

    raw = read_raw_spec(spec_path)
    # Pretrained weights are left out (a download, and not what the CPU sample measures).
    settings = {**raw.get("fixed", {}), "pretrained": False, "device": "cpu", "num_workers": 0,
                **(overrides or {})}
    settings.pop("seed", None)
    spec = parse_spec({**raw, "fixed": settings}, source=Path(spec_path).name)
    planned = [PlannedConfig(config_id(dict(p), 0), "prior", 0, dict(p)) for p in spec.points_to_evaluate]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=draw_seed))
    space = define_by_run(spec.space)
    drawn: list[dict] = []
    while len(drawn) < random_configs:
        trial = study.ask()
        space(trial)
        study.tell(trial, 0.0)
        if trial.params not in drawn and trial.params not in [p.params for p in planned]:
            drawn.append(dict(trial.params))
    planned += [PlannedConfig(config_id(p, 0), "random", 0, p) for p in drawn]
    planned += [PlannedConfig(config_id(p, 1), "repeat", 1, p) for p in drawn[:repeats]]
    return RecordingPlan(str(spec_path), raw.get("space", {}), settings, tuple(planned))


def trial_dict(plan: RecordingPlan, planned: PlannedConfig, *, train_dir: str, val_dir: str,
               image_size: int) -> dict:
    """What ``TrialConfig.from_dict`` gets for one planned configuration."""
    return {**plan.settings, **planned.params, "seed": planned.seed, "train_dir": train_dir,
            "val_dir": val_dir, "image_size": image_size}


# --- the table ---------------------------------------------------------------------------------

@dataclass
class RecordedCurve:
    """One recorded configuration: per-epoch arrays (shorter than the plan's epochs if it diverged)."""

    config_id: str
    origin: str
    seed: int
    params: dict
    status: str  # the last report's status: completed | converged | diverged
    epochs: dict[str, np.ndarray] = field(default_factory=dict)  # column -> values per epoch

    def rows(self) -> list[dict]:
        count = len(self.epochs["val_acc"])
        return [{"config_id": self.config_id, "origin": self.origin, "seed": self.seed,
                 "params": canonical_json(self.params), "epoch": i + 1,
                 "status": self.status if i == count - 1 else "running",
                 **{c: float(self.epochs[c][i]) for c in EPOCH_COLUMNS if c in self.epochs}}
                for i in range(count)]


def curve_from_reports(planned: PlannedConfig, reports: list[dict], cpu_seconds: list[float]) -> RecordedCurve:
    columns = {c: np.array([r.get(c, np.nan) for r in reports], dtype=float)
               for c in EPOCH_COLUMNS if c != "cpu_s"}
    columns["cpu_s"] = np.array(cpu_seconds, dtype=float)
    status = reports[-1].get("status", "completed") if reports else "failed"
    return RecordedCurve(planned.config_id, planned.origin, planned.seed, planned.params, status, columns)


def write_table(path: str | Path, curves: list[RecordedCurve], metadata: dict) -> None:
    """Writes atomically (a reader, or a killed recorder, never sees half a file)."""
    rows = [row for curve in curves for row in curve.rows()]
    schema = pa.schema([("config_id", pa.string()), ("origin", pa.string()), ("seed", pa.int64()),
                        ("params", pa.string()), ("epoch", pa.int64()), ("status", pa.string()),
                        *[(c, pa.float64()) for c in EPOCH_COLUMNS]])
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(
        {METADATA_KEY: json.dumps(metadata, default=str).encode()})  # key order kept: the space's order matters
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    pq.write_table(table, partial, compression="zstd")
    os.replace(partial, path)


def read_metadata(path: str | Path) -> dict:
    raw = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in raw:
        raise ValueError(f"{path}: not a recorded-curve table (no {METADATA_KEY.decode()} metadata)")
    return json.loads(raw[METADATA_KEY])


def read_table(path: str | Path) -> tuple[dict, list[RecordedCurve]]:
    """(metadata, curves in the order they were recorded)."""
    metadata = read_metadata(path)
    columns = pq.read_table(path).to_pydict()
    curves: dict[str, RecordedCurve] = {}
    for i, cid in enumerate(columns["config_id"]):
        curve = curves.get(cid)
        if curve is None:
            curve = curves[cid] = RecordedCurve(cid, columns["origin"][i], int(columns["seed"][i]),
                                                json.loads(columns["params"][i]), "running",
                                                {c: [] for c in EPOCH_COLUMNS})
        for c in EPOCH_COLUMNS:
            value = columns[c][i]
            curve.epochs[c].append(np.nan if value is None else value)
        curve.status = columns["status"][i]
    for curve in curves.values():
        curve.epochs = {c: np.asarray(v, dtype=float) for c, v in curve.epochs.items()}
    return metadata, list(curves.values())
