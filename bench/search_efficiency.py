"""How much compute does the search save? Four ways to search the same space on real images.

1. ours:        TPE (fidelity-correct: ASHA-stopped trials told to Optuna as PRUNED) + ASHA, via Ray Tune
2. random+fifo: Ray Tune with Optuna's random sampler and no early stopping
3. journal:     the journal's learning-rate grid 2^0 .. 2^-12, every trial to the end (FIFO)
4. optuna-sha:  plain Optuna TPE + SuccessiveHalvingPruner in one process, no Ray

For each method and seed: epochs and wall seconds until the first epoch at or above the target
validation accuracy, and the best accuracy within an equal epoch budget. Medians over the seeds are
printed as a table and saved as JSON. A second part measures the driver's scheduling overhead per trial
with a trivial trainable (200 trials) against Ray's published ~0.14 s per trial.

Usage: python bench/search_efficiency.py [--seeds 3] [--target 0.30] [--out bench/results/search_efficiency.json]
It unpacks the shipped CIFAR-10 sample into a temporary folder; on 2 CPU cores it takes ~15-25 min.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from ray import tune

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.datasets.demo import unpack_demo_data  # noqa: E402
from tuner.cluster.connect import start_ray  # noqa: E402
from tuner.places import SearchPlaces  # noqa: E402
from tuner.search.driver import build_tuner  # noqa: E402
from tuner.search.command import make_tracking  # noqa: E402
from tuner.search.searcher import TruthfulOptunaSearch  # noqa: E402
from tuner.search.space import define_by_run  # noqa: E402
from tuner.spec import parse_spec  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.runner import run_trial  # noqa: E402

FIXED = {"epochs": 5, "train_subset": 600, "width": 0.125, "augmentation": "light", "arch": "resnet18"}
SPACE = {
    "lr": {"loguniform": [2.0**-12, 1.0]},
    "optimizer": {"choice": ["sgd", "adam"]},
    "batch_size": {"choice": [32, 64, 128]},
}
NUM_SAMPLES = 10


def spec_for(method: str, data: Path, seed: int):
    raw = {
        "name": f"{method.replace('+', '-')}-s{seed}",
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": 32},
        "fixed": {**FIXED, "seed": seed},
        "space": SPACE,
        "sampler": {"name": "tpe", "seed": seed, "options": {"n_startup_trials": 4}},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
        "budget": {"num_samples": NUM_SAMPLES, "max_concurrent": 2},
    }
    if method == "random+fifo":
        raw.update(sampler={"name": "random", "seed": seed}, scheduler={"name": "fifo"})
    if method == "journal":
        raw.update(space={"lr": {"grid": [2.0**-k for k in range(13)]}},
                   sampler={"name": "grid", "seed": seed}, scheduler={"name": "fifo"})
        raw["fixed"] = {**raw["fixed"], "optimizer": "sgd", "batch_size": 64}
    return parse_spec(raw, source=f"{method}.yaml")


def ray_method(method: str, data: Path, seed: int, work: Path) -> list[tuple[float, float]]:
    """(wall-clock timestamp, val_acc) of every epoch of every trial, in the order they happened."""
    spec = spec_for(method, data, seed)
    places = SearchPlaces(str(work / "runs"), f"sqlite:///{work / 'mlflow.db'}", work / "mlruns",
                          work / "runs" / spec.name / "tuner_state")
    start = time.time()
    results = build_tuner(spec, places, make_tracking(spec, places, None, ROOT)).fit()
    events = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or "val_acc" not in frame:
            continue
        events += [(float(t) - start, float(v)) for t, v in zip(frame["timestamp"], frame["val_acc"])]
    return sorted(events)


def optuna_sha(data: Path, seed: int) -> list[tuple[float, float]]:
    spec = spec_for("optuna-sha", data, seed)
    events: list[tuple[float, float]] = []
    start = time.time()

    def objective(trial: optuna.Trial) -> float:
        values = {**spec.base_config(),
                  "lr": trial.suggest_float("lr", 2.0**-12, 1.0, log=True),
                  "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam"]),
                  "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128])}
        best = 0.0

        def report(metrics: dict, _checkpoint) -> None:
            nonlocal best
            events.append((time.time() - start, metrics["val_acc"]))
            best = max(best, metrics["val_acc"])
            trial.report(metrics["val_acc"], metrics["epoch"])
            if metrics.get("status") == "running" and trial.should_prune():
                raise optuna.TrialPruned()

        run_trial(TrialConfig.from_dict(values), report=report)
        return best

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    )
    study.optimize(objective, n_trials=NUM_SAMPLES)
    return events


def summarise(events: list[tuple[float, float]], target: float, budget: int) -> dict:
    reached = next((i for i, (_, acc) in enumerate(events) if acc >= target), None)
    return {
        "epochs_total": len(events),
        "wall_s_total": round(events[-1][0], 1) if events else None,
        "epochs_to_target": None if reached is None else reached + 1,
        "wall_s_to_target": None if reached is None else round(events[reached][0], 1),
        "best_at_budget": max((acc for _, acc in events[:budget]), default=0.0),
        "best_overall": max((acc for _, acc in events), default=0.0),
    }


def median(values):
    present = [v for v in values if v is not None]
    return statistics.median(present) if len(present) == len(values) else None


def scheduling_overhead(work: Path, trials: int = 200) -> dict:
    """Driver wall time per trial for a trainable that reports once and returns."""
    spec = parse_spec({"name": "overhead", "data": {"train": str(work), "val": str(work)},
                       "space": {"lr": {"loguniform": [1e-4, 1.0]}}}, source="overhead.yaml")

    def trivial(config):
        tune.report({"val_acc": config["lr"], "status": "completed"})

    timings = {}
    for label, searcher in (
        ("ray-default", None),
        ("ours (OptunaSearch + MLflow callback)", TruthfulOptunaSearch(
            space=define_by_run(spec.space), metric="val_acc", mode="max",
            sampler=optuna.samplers.RandomSampler(seed=0))),
    ):
        places = SearchPlaces(str(work / "overhead"), f"sqlite:///{work / 'overhead.db'}", work / "mlruns",
                              work / "overhead" / label[:4])
        callbacks = [make_tracking(spec, places, None, ROOT)] if searcher else []
        tuner = tune.Tuner(
            trivial,
            param_space={} if searcher else {"lr": tune.loguniform(1e-4, 1.0)},
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, metric=None if searcher else "val_acc",
                                        mode=None if searcher else "max"),
            run_config=tune.RunConfig(name=label[:4], storage_path=str(work / "overhead"), callbacks=callbacks,
                                      verbose=0),
        )
        start = time.time()
        tuner.fit()
        timings[label] = round((time.time() - start) / trials, 3)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--methods", default="ours,random+fifo,journal,optuna-sha")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_efficiency.json"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="tuner-bench-"))
    data = work / "data"
    unpack_demo_data(data)
    start_ray(None)
    runs: dict[str, list[list]] = {}
    for method in args.methods.split(","):
        for seed in range(args.seeds):
            events = optuna_sha(data, seed) if method == "optuna-sha" else ray_method(method, data, seed, work)
            runs.setdefault(method, []).append(events)
            print(f"{method} seed {seed}: {len(events)} epochs, best {max(a for _, a in events):.3f}", flush=True)
    budget = min(len(e) for per_seed in runs.values() for e in per_seed)
    table = {}
    for method, per_seed in runs.items():
        rows = [summarise(e, args.target, budget) for e in per_seed]
        table[method] = {key: median([r[key] for r in rows]) for key in rows[0]}
        table[method]["seeds"] = rows
        table[method]["events"] = [[(round(t, 2), round(a, 4)) for t, a in e] for e in per_seed]
    print(f"\ntarget val_acc {args.target}; equal budget = {budget} epochs; medians over {args.seeds} seeds")
    header = f"{'method':<14}{'epochs→target':>15}{'wall s→target':>15}{'best@budget':>13}{'epochs total':>14}{'wall s total':>14}"
    print(header)
    for method, row in table.items():
        print(f"{method:<14}{str(row['epochs_to_target']):>15}{str(row['wall_s_to_target']):>15}"
              f"{row['best_at_budget']:>13.3f}{row['epochs_total']:>14}{row['wall_s_total']:>14}")
    overhead = None if args.skip_overhead else scheduling_overhead(work)
    if overhead:
        print("\nscheduling overhead per trivial trial (s):", overhead, "(Ray's published figure: ~0.14 s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target": args.target, "budget_epochs": budget, "fixed": FIXED,
                               "space": SPACE, "num_samples": NUM_SAMPLES, "methods": table,
                               "overhead_s_per_trial": overhead}, indent=1))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
