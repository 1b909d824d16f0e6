"""Where a search's slot time goes: training, or start-up, checkpoints and bookkeeping?

A real search of the shipped sample (search_spaces/demo.yaml: the CIFAR-10 sample, resnet18 at
width 1/8 or 1/4, ASHA) with the product's driver, trainable and MLflow tracking (SQLite), 2 slots,
12 trials. A Tune callback on the driver (the product's MlflowTracking, subclassed to take the
time) records when each trial starts, each epoch's report and the trial's end; each report carries
the trial's own ``epoch_time_s`` (train + validation, timed inside the trial). From these:

- ``slot_utilisation``: epoch compute inside [first trial start, last trial start] / (that span x
  slots): the steady state, while the driver always has a trial to launch. The drain after the
  last launch (slots idle because no trial is left) is reported separately, as is the whole search.
- per-trial start-up: trial start on the driver -> its first epoch's compute begins (process or actor
  reuse, imports, data and model built);
- per-epoch gap: the end of one epoch's compute -> the next one's start (checkpoint written, result
  reported, Ray's bookkeeping);
- driver CPU-seconds per trial (this process: Ray's driver loop, the searcher, the MLflow callback),
  the sampler's own suggest CPU time apart; also split into the once-per-search set-up (before the
  first trial starts: MLflow's and Optuna's stores, the Tuner) and the per-trial cost while trials
  run (``driver_cpu_s_per_trial_running``); peak driver RSS.

Usage: python bench/slot_utilisation.py [--trials 12] [--slots 2] [--out bench/results/slot_utilisation.json]
On 2 idle CPU cores: ~5 minutes. Run it on an otherwise idle machine: it measures time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEMO_SPEC = ROOT / "search_spaces" / "demo.yaml"


@dataclasses.dataclass
class TrialTimes:
    """One trial as the driver saw it: wall-clock seconds (time.time())."""

    trial: str
    start: float
    reports: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (at, epoch_time_s)
    end: Optional[float] = None

    def epochs(self) -> list[tuple[float, float]]:
        """(begin, end) of each epoch's compute: the report's time less the trial's own epoch time."""
        return [(at - seconds, at) for at, seconds in self.reports]


def overlap(interval: tuple[float, float], window: tuple[float, float]) -> float:
    return max(0.0, min(interval[1], window[1]) - max(interval[0], window[0]))


def busy_fraction(trials: list[TrialTimes], window: tuple[float, float], slots: int) -> Optional[float]:
    """Epoch compute inside ``window`` / (its length x slots); None for an empty window."""
    span = window[1] - window[0]
    if span <= 0:
        return None
    busy = sum(overlap(epoch, window) for t in trials for epoch in t.epochs())
    return busy / (span * slots)


def startup_seconds(trial: TrialTimes) -> Optional[float]:
    """Trial start on the driver -> its first epoch's compute begins."""
    epochs = trial.epochs()
    return epochs[0][0] - trial.start if epochs else None


def epoch_gaps(trial: TrialTimes) -> list[float]:
    """Between one epoch's compute and the next: checkpoint, report, bookkeeping."""
    epochs = trial.epochs()
    return [later[0] - earlier[1] for earlier, later in zip(epochs, epochs[1:])]


def slot_metrics(trials: list[TrialTimes], slots: int, end: float) -> dict:
    """The benchmark's numbers from the trials' times (``end``: when the search returned)."""
    first_start = min(t.start for t in trials)
    last_launch = max(t.start for t in trials)
    startups = [s for s in map(startup_seconds, trials) if s is not None]
    gaps = [g for t in trials for g in epoch_gaps(t)]
    compute = sum(b - a for t in trials for a, b in t.epochs())
    return {
        "slot_utilisation": _round(busy_fraction(trials, (first_start, last_launch), slots)),
        "drain_utilisation": _round(busy_fraction(trials, (last_launch, end), slots)),
        "search_utilisation": _round(busy_fraction(trials, (first_start, end), slots)),
        "steady_span_s": round(last_launch - first_start, 2),
        "drain_s": round(end - last_launch, 2),
        "epoch_compute_s": round(compute, 2),
        "startup_s": _summary(startups),
        "epoch_gap_s": _summary(gaps),
        "epochs": sum(len(t.reports) for t in trials),
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {"median": None, "max": None, "sum": 0.0}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3),
            "sum": round(sum(values), 2)}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


def driver_cpu(before: float, first_start: float, last_end: float, after: float, *,
               suggest_cpu: float, trials: int) -> dict:
    """The driver's CPU seconds (process_time marks), whole and split: the set-up before the first
    trial starts (MLflow's and Optuna's stores, on a fresh SQLite file their tables; the Tuner; the
    first suggestion), the work while trials run, the tear-down after the last one ends."""
    total, running = after - before, last_end - first_start
    return {
        "driver_cpu_s_per_trial": round((total - suggest_cpu) / trials, 3),
        "driver_cpu_s_total": round(total, 2),
        "driver_setup_cpu_s": round(first_start - before, 2),
        "driver_teardown_cpu_s": round(after - last_end, 2),
        # Per trial while trials run, suggestions excluded (all of them: the first is in the set-up,
        # so this errs high by one suggestion's share).
        "driver_cpu_s_per_trial_running": round((running - suggest_cpu) / trials, 3),
    }


def timed_tracking(**kwargs):
    """The product's MLflow callback, also taking each trial's times (driver wall clock)."""
    from tuner.tracking.callback import MlflowTracking

    class TimedTracking(MlflowTracking):
        def __init__(self, **inner):
            super().__init__(**inner)
            self.times: dict[str, TrialTimes] = {}
            # Driver CPU (process_time) when the first trial started and when the last one ended:
            # the search's set-up and tear-down apart from the per-trial work between them.
            self.cpu_first_start: Optional[float] = None
            self.cpu_last_end: Optional[float] = None

        def on_trial_start(self, iteration, trials, trial, **info):
            if self.cpu_first_start is None:
                self.cpu_first_start = time.process_time()
            self.times.setdefault(trial.trial_id, TrialTimes(trial.trial_id, time.time()))
            super().on_trial_start(iteration, trials, trial, **info)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch_time_s" in result:
                self.times[trial.trial_id].reports.append((time.time(), float(result["epoch_time_s"])))
            super().on_trial_result(iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.times[trial.trial_id].end = time.time()
            super().on_trial_complete(iteration, trials, trial, **info)
            self.cpu_last_end = time.process_time()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.times[trial.trial_id].end = time.time()
            super().on_trial_error(iteration, trials, trial, **info)
            self.cpu_last_end = time.process_time()

    return TimedTracking(**kwargs)


class SuggestClock:
    """CPU seconds the sampler spends in ``suggest`` (on the driver), to report the driver apart."""

    def __init__(self):
        self.cpu_s = 0.0
        self.calls = 0

    def install(self) -> None:
        from tuner.search.searcher import TruthfulOptunaSearch

        original = TruthfulOptunaSearch.suggest
        clock = self

        def suggest(searcher, trial_id):
            began = time.process_time()
            try:
                return original(searcher, trial_id)
            finally:
                clock.cpu_s += time.process_time() - began
                clock.calls += 1

        TruthfulOptunaSearch.suggest = suggest


def run(work: Path, *, trials: int, slots: int) -> dict:
    from tuner.cluster.connect import start_ray
    from tuner.datasets.demo import unpack_demo_data
    from tuner.places import SearchPlaces
    from tuner.search.command import search_params
    from tuner.search.driver import run_search
    from tuner.spec.load import load_spec

    unpack_demo_data(work / "data")
    spec = load_spec(DEMO_SPEC, overrides={})
    spec = dataclasses.replace(
        spec, name="slots", data=dataclasses.replace(spec.data, train=str(work / "data" / "train"),
                                                     val=str(work / "data" / "val"), test=None),
        budget=dataclasses.replace(spec.budget, num_samples=trials, max_concurrent=slots))
    places = SearchPlaces(str(work / "ray"), f"sqlite:///{work / 'mlflow.db'}", work / "mlruns", work / "state")
    tracking = timed_tracking(tracking_uri=places.tracking_uri, search_name=spec.name,
                              state_dir=places.state_dir, artifact_root=places.artifact_root,
                              search_params=search_params(spec), search_tags={}, spec_file=DEMO_SPEC,
                              metric=spec.metric, mode=spec.mode)
    clock = SuggestClock()
    clock.install()
    start_ray(None)  # Ray's start is not the search's: measured from here on
    cpu_before, started = time.process_time(), time.time()
    results = run_search(spec, places, tracking)
    ended, cpu_after = time.time(), time.process_time()
    times = list(tracking.times.values())
    return {
        **slot_metrics(times, slots, ended),
        **driver_cpu(cpu_before, tracking.cpu_first_start, tracking.cpu_last_end, cpu_after,
                     suggest_cpu=clock.cpu_s, trials=len(times)),
        "suggest_cpu_s_per_trial": round(clock.cpu_s / max(clock.calls, 1), 3),
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(ended - started, 1),
        "trials": len(times), "trials_errored": sum(1 for r in results if r.error is not None),
        "per_trial": [{"trial": t.trial, "start": round(t.start - started, 3),
                       "end": None if t.end is None else round(t.end - started, 3),
                       "reports": [[round(at - started, 3), round(s, 3)] for at, s in t.reports]}
                      for t in times],
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "slot_utilisation.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tuner-slots-") as scratch:
        row = run(Path(scratch), trials=args.trials, slots=args.slots)
    print(f"{row['trials']} trials, {args.slots} slots, {row['wall_s']} s wall, {row['epochs']} epochs")
    for key in ("slot_utilisation", "drain_utilisation", "search_utilisation", "driver_cpu_s_per_trial",
                "driver_setup_cpu_s", "driver_cpu_s_per_trial_running",
                "suggest_cpu_s_per_trial", "driver_peak_rss_mib"):
        print(f"  {key:<33}{row[key]}")
    print(f"  {'startup_s (median/max)':<33}{row['startup_s']['median']} / {row['startup_s']['max']}")
    print(f"  {'epoch_gap_s (median/max)':<33}{row['epoch_gap_s']['median']} / {row['epoch_gap_s']['max']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/slot_utilisation.py", *(sys.argv[1:] if argv is None else argv)])
    out.write_text(json.dumps({"command": command, "slots": args.slots, **row}, indent=1) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
