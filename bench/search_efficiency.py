"""Does the default search beat random search on real training? Equal epoch budgets, several seeds.

The recorded-curve benchmark (bench/search_quality.py) chooses the defaults; this checks them on
real training: the shipped CIFAR-10 sample, the space of search_spaces/recipe.yaml with the
recording's fixed settings (resnet18 at width 1/8 or 1/4, a fixed 1,000-image training subset,
15 epochs, no pretrained weights, one torch thread per trial), the REAL driver and trainable.

Methods (no method gets the spec's points_to_evaluate: the search has to find good points itself):
  default      what a spec gets when it names no sampler or scheduler
  random+fifo  Optuna's random sampler, every trial to its end

Each search may consume ``--budget-trials`` x 15 epochs (all its trials together); the epoch that
would exceed the budget ends its trial, and the search, without being counted. Per method and
seed: the best val_acc within the budget, the anytime curve (best so far per epoch consumed), the
trials run, the wall seconds. Medians are printed; every seed's numbers and events are saved.

Usage: python bench/search_efficiency.py [--seeds 5] [--budget-trials 3] [--concurrency 2]
On 2 CPU cores: ~2.5 min per search at the defaults, ~25 min for 5 seeds x 2 methods.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.curves.metrics import anytime_best  # noqa: E402
from bench.curves.methods import SAMPLES_MARGIN, expected_epochs_per_trial, no_tracking  # noqa: E402
from bench.curves.recording import DEFAULT_SPEC, DEFAULT_TABLE, read_metadata, read_raw_spec  # noqa: E402
from bench.curves.replay import (EpochBudget, append_event, budget_stopper, prepare_driver,  # noqa: E402
                                 read_events)

METHODS = ("default", "random+fifo")
SEED_OFFSET = 100  # sampler and training seeds: none of the recording's, none of search_quality's


def bench_raw_spec(raw_spec: dict, settings: dict, method: str, seed: int, data: Path,
                   concurrency: int, num_samples: int) -> dict:
    """The spec one search runs: recipe.yaml's space, the recording's fixed settings."""
    raw = copy.deepcopy(raw_spec)
    raw["name"] = f"eff-{method.replace('+', '-')}-s{seed}"
    raw["data"] = {"train": str(data / "train"), "val": str(data / "val"), "image_size": 32}
    fixed = {k: v for k, v in settings.items() if k not in ("threads", "device")}
    raw["fixed"] = {**raw.get("fixed", {}), **fixed, "seed": seed}
    raw.pop("points_to_evaluate", None)
    raw.pop("scheduler", None)
    raw["sampler"] = {"seed": seed}
    if method == "random+fifo":
        raw["sampler"] = {"name": "random", "seed": seed}
        raw["scheduler"] = {"name": "fifo"}
    raw["budget"] = {"num_samples": num_samples, "max_concurrent": concurrency, "max_failures": 0}
    raw["resources"] = {"cpu": 1, "gpu": 0}
    for key in ("storage", "tracking"):
        raw.pop(key, None)
    return raw


class BudgetSpent(Exception):
    """Raised from the report callback: the search's epochs are used up."""


def budgeted_trainable(events_dir: Path, epoch_budget: int):
    """The real trainable, counting every epoch against the search's budget (shared by its trials)."""
    events_dir.mkdir(parents=True, exist_ok=True)
    budget = EpochBudget(events_dir / "budget", epoch_budget)

    def budgeted_trial(config: dict) -> None:
        import uuid

        import torch
        from ray import tune

        from trainables.config import TrialConfig
        from trainables.runner import run_trial

        torch.set_num_threads(1)  # as recorded: one thread per trial, trials side by side
        trial = uuid.uuid4().hex[:12]

        def report(metrics: dict, _checkpoint_dir) -> None:
            if not budget.take():
                raise BudgetSpent
            append_event(events_dir, trial, {"t": time.time(), "trial": trial, "epoch": metrics["epoch"],
                                             "val_acc": metrics["val_acc"]})
            tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})

        if budget.spent():
            return
        try:
            run_trial(TrialConfig.from_dict(config), report=report)
        except BudgetSpent:
            return

    return budgeted_trial


def run_one(raw: dict, work: Path, epoch_budget: int) -> dict:
    import dataclasses
    import math

    from tuner.places import SearchPlaces
    from tuner.search.driver import run_search
    from tuner.spec import parse_spec

    spec = parse_spec(raw, source=f"bench:{raw['name']}")
    # As many trials as the budget pays for (and a margin), as a user sizing num_samples would ask:
    # TPE sizes its random start-up to num_samples.
    num_samples = math.ceil(SAMPLES_MARGIN * epoch_budget / expected_epochs_per_trial(spec))
    spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, num_samples=num_samples))
    folder = work / spec.name
    shutil.rmtree(folder, ignore_errors=True)
    places = SearchPlaces(str(folder / "ray"), f"sqlite:///{folder / 'mlflow.db'}", folder / "mlruns",
                          folder / "state")
    start = time.time()
    trainable = budgeted_trainable(folder / "events", epoch_budget)
    results = run_search(spec, places, no_tracking(), trainable=trainable,
                         stop=budget_stopper(folder / "events", epoch_budget))
    wall = time.time() - start
    events = [{**e, "t": round(e["t"] - start, 2)} for e in read_events(folder / "events")]
    curve = anytime_best([e["val_acc"] for e in events], epoch_budget)
    best = max(events, key=lambda e: e["val_acc"], default=None)
    shutil.rmtree(folder, ignore_errors=True)
    return {"best_at_budget": None if best is None else round(best["val_acc"], 4),
            "epochs_used": len(events), "trials_trained": len({e["trial"] for e in events}),
            "trials_started": len(results), "num_samples": num_samples, "wall_s": round(wall, 1),
            "curve": [round(float(x), 4) for x in curve], "events": events}


def median(values: list) -> Optional[float]:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-trials", type=float, default=3, help="epoch budget, in full trials")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--spec", default=str(DEFAULT_SPEC))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_efficiency.json"))
    args = parser.parse_args(argv)

    import optuna
    import ray

    from tuner.datasets.demo import unpack_demo_data

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw_spec = read_raw_spec(args.spec)
    settings = read_metadata(DEFAULT_TABLE)["settings"]
    epochs = int(settings["epochs"])
    epoch_budget = int(round(args.budget_trials * epochs))
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    seeds = [SEED_OFFSET + i for i in range(args.seeds)]
    prepare_driver()  # Ray's workers get bench/curves/replay.py by value (bench/ is not installed)
    ray.init(address="local", num_cpus=args.concurrency, num_gpus=0, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="tuner-eff-") as scratch:
        work = Path(scratch)
        unpack_demo_data(work / "data")
        for seed in seeds:  # seeds outermost: a machine that slows down slows both methods alike
            for method in methods:
                raw = bench_raw_spec(raw_spec, settings, method, seed, work / "data", args.concurrency,
                                     num_samples=1)  # run_one sizes it to the budget
                row = {"seed": seed, **run_one(raw, work, epoch_budget)}
                per_method[method].append(row)
                print(f"{method} seed {seed}: best {row['best_at_budget']} in {row['epochs_used']} epochs, "
                      f"{row['trials_trained']} trials trained, {row['wall_s']} s", flush=True)
    table = {}
    for method, rows in per_method.items():
        bests = [r["best_at_budget"] for r in rows]
        table[method] = {"best_at_budget_median": median(bests), "best_at_budget_per_seed": bests,
                         "wall_s_median": median([r["wall_s"] for r in rows]), "per_seed": rows}
    print(f"\nbudget {epoch_budget} epochs per search, {args.concurrency} trials at once, seeds {seeds}")
    print(f"{'method':<14}{'median best':>12}  per seed")
    for method, row in table.items():
        print(f"{method:<14}{row['best_at_budget_median']:>12}  {row['best_at_budget_per_seed']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": shlex.join(["python", "bench/search_efficiency.py", *(sys.argv[1:] if argv is None else argv)]),
        "seeds": seeds, "budget_epochs": epoch_budget, "epochs_per_trial": epochs,
        "concurrency": args.concurrency, "settings": settings, "space": raw_spec["space"],
        "points_to_evaluate": "none, for every method", "methods": table,
    }, indent=1))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
