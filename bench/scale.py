"""A 1,000-trial search on one machine: does the driver keep up, and do MLflow and Optuna stay usable?

The REAL search path (spec -> our OptunaSearch (TPE) -> ConcurrencyLimiter -> Ray Tune, the
product's MLflow tracking on SQLite) runs ``--trials`` trials of the recipe's space
(``search_spaces/recipe.yaml``), each a replayed learning curve (the recorded surrogate,
``bench/curves/``) that sleeps exactly ``--trial-seconds`` in ``--epochs`` epochs: its compute is
known, so the theoretical wall is trials x trial_seconds / slots, and everything above it is the
driver's and Ray's overhead. FIFO: every trial runs all its epochs.

Reported (``bench/results/scale.json``): ``wall_over_theoretical``; driver CPU-seconds per trial
(this process, the sampler's suggest apart); the sampler's seconds per suggestion as the study
grows (median and p95 of the last 100, i.e. near ``--trials`` finished trials); then, on the
finished search: ``tuner leaderboard NAME`` (a fresh process, as a user runs it: the best 50) and
``--format csv`` (every trial), the part of the table's run spent importing MLflow (most of it), the
MLflow runs table's query (``search_runs`` of every trial, what the UI's table loads) and the full
leaderboard's load in-process.

Usage: python bench/scale.py [--trials 1000] [--slots 8] [--trial-seconds 2] [--epochs 3] [--sends-in-loop]
(``--sends-in-loop``: the MLflow writes sent by Ray's loop itself, the way before the sender thread.)
On 2 CPU cores the default takes about half an hour. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.curves.recording import DEFAULT_SPEC  # noqa: E402  (after the path is set)
from bench.curves.replay import replay_epochs, searched_params  # noqa: E402
from bench.curves.surrogate import DEFAULT_SURROGATE, Surrogate  # noqa: E402


def make_trainable(surrogate: Surrogate, *, epochs: int, trial_seconds: float):
    """A function trainable: the surrogate's curve for its config, ``trial_seconds`` of sleep."""

    def scale_trial(config: dict) -> None:
        from ray import tune  # only Ray's workers run this

        params = searched_params(surrogate, config)
        for metrics in replay_epochs(surrogate, params, seed=0, epochs=epochs):
            time.sleep(trial_seconds / epochs)
            tune.report({**metrics, "epoch_time_s": trial_seconds / epochs})
    return scale_trial


class SuggestTimes:
    """Seconds (wall) and CPU seconds of each ``suggest`` of our searcher, in call order."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu = 0.0

    def install(self) -> None:
        from tuner.search.searcher import TruthfulOptunaSearch

        original = TruthfulOptunaSearch.suggest
        times = self

        def suggest(searcher, trial_id):
            began, cpu = time.perf_counter(), time.process_time()
            try:
                return original(searcher, trial_id)
            finally:
                times.wall.append(time.perf_counter() - began)
                times.cpu += time.process_time() - cpu

        TruthfulOptunaSearch.suggest = suggest


def build_spec(work: Path, *, trials: int, slots: int, epochs: int, cpus: float):
    import yaml

    from tuner.spec import parse_spec

    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["name"] = "scale"
    raw["data"] = {"train": str(work), "val": str(work), "image_size": raw.get("data", {}).get("image_size", 32)}
    raw["fixed"] = {**raw.get("fixed", {}), "epochs": epochs, "pretrained": False}
    raw.pop("points_to_evaluate", None)
    raw["sampler"] = {"name": "tpe", "seed": 0}
    raw["scheduler"] = {"name": "fifo"}
    raw["budget"] = {"num_samples": trials, "max_concurrent": slots}
    raw["resources"] = {"cpu": cpus / slots, "gpu": 0}  # sleeping trials: all slots fit the cores
    raw.pop("storage", None)
    raw.pop("tracking", None)
    return parse_spec(raw, source="bench:scale")


def timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def package_import_seconds(importtime_log: str, package: str) -> float:
    """Seconds a process spent importing ``package`` (its modules and whatever they imported), from
    its ``python -X importtime`` lines: the cumulative time of each outermost ``package`` entry.

    The log lists a module after the modules it imported, indented one step deeper (two spaces);
    read backwards, every entry comes after its parent, so a stack of ancestors says whether an
    entry is already counted inside an outer ``package`` entry."""
    total, ancestors = 0, []  # (depth, inside the package)
    for line in reversed(importtime_log.splitlines()):
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, field = line.split("|")
        if not cumulative.strip().isdigit():
            continue  # the header line
        name = field[1:].lstrip(" ")
        depth = (len(field) - 1 - len(name)) // 2
        while ancestors and ancestors[-1][0] >= depth:
            ancestors.pop()
        inside = bool(ancestors) and ancestors[-1][1]
        ours = name == package or name.startswith(package + ".")
        if ours and not inside:
            total += int(cumulative)
        ancestors.append((depth, inside or ours))
    return total / 1e6


def run(work: Path, *, trials: int, slots: int, trial_seconds: float, epochs: int,
        sends_in_loop: bool = False) -> dict:
    import ray
    from mlflow.tracking import MlflowClient

    from tuner.cluster.connect import start_ray
    from tuner.places import SearchPlaces
    from tuner.search.command import search_params
    from tuner.search.driver import run_search
    from tuner.tracking.callback import MlflowTracking
    from tuner.tracking.leaderboard import load_board, render

    surrogate = Surrogate.load(DEFAULT_SURROGATE)
    cpus = float(os.cpu_count() or 2)
    spec = build_spec(work, trials=trials, slots=slots, epochs=epochs, cpus=cpus)
    places = SearchPlaces(str(work / "ray"), f"sqlite:///{work / 'mlflow.db'}", work / "mlruns", work / "state")
    tracking = MlflowTracking(tracking_uri=places.tracking_uri, search_name=spec.name,
                              state_dir=places.state_dir, artifact_root=places.artifact_root,
                              search_params=search_params(spec), search_tags={}, spec_file=DEFAULT_SPEC,
                              metric=spec.metric, mode=spec.mode, background_sends=not sends_in_loop)
    suggest = SuggestTimes()
    suggest.install()
    start_ray(None)
    # The trainable and the surrogate travel by value: Ray's workers need not import bench/.
    for module in {"bench.curves.replay", "bench.curves.surrogate", __name__} - {"__main__"}:
        ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    trainable = make_trainable(surrogate, epochs=epochs, trial_seconds=trial_seconds)
    cpu_before, started = time.process_time(), time.time()
    results = run_search(spec, places, tracking, trainable=trainable)
    wall, driver_cpu = time.time() - started, time.process_time() - cpu_before
    theoretical = trials * trial_seconds / slots
    last = suggest.wall[-100:]

    ray.shutdown()  # what a user times: the leaderboard of a finished search, not beside a live cluster
    client = MlflowClient(places.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs_query_s = timed(lambda: client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'",
                                                    max_results=trials + 10))
    board_s = timed(lambda: render(load_board(client, spec.name), "table"))
    leaderboard = [sys.executable, "-m", "tuner.cli", "leaderboard", spec.name, "--tracking-uri",
                   places.tracking_uri]
    subprocess.run(leaderboard, capture_output=True, cwd=work)  # warm-up: libraries into the page cache
    cli_s, cli_ok, import_s = {}, True, 0.0
    for label, extra in (("table", []), ("csv_all", ["--format", "csv"])):
        # The table's run also reports its imports (-X importtime, a few ms of printing): the MLflow
        # share is then measured in the very process that is timed, not in another one.
        command = [sys.executable, "-X", "importtime", *leaderboard[1:]] if label == "table" else leaderboard
        began = time.perf_counter()
        cli = subprocess.run(command + extra, capture_output=True, text=True, cwd=work)
        cli_s[label] = round(time.perf_counter() - began, 3)
        cli_ok = cli_ok and cli.returncode == 0
        if label == "table":
            import_s = package_import_seconds(cli.stderr, "mlflow")
    return {
        "trials": len(results),
        "trials_errored": sum(r.error is not None for r in results),
        "slots": slots, "trial_seconds": trial_seconds, "epochs_per_trial": epochs,
        "wall_s": round(wall, 1), "theoretical_wall_s": round(theoretical, 1),
        "wall_over_theoretical": round(wall / theoretical, 3),
        "driver_cpu_s_per_trial": round((driver_cpu - suggest.cpu) / max(len(results), 1), 3),
        "driver_cpu_s_total": round(driver_cpu, 1),
        "suggest": {"calls": len(suggest.wall), "cpu_s_total": round(suggest.cpu, 1),
                    "last_100_median_s": round(statistics.median(last), 4) if last else None,
                    "last_100_p95_s": round(sorted(last)[int(0.95 * (len(last) - 1))], 4) if last else None,
                    "per_call_s": [round(s, 4) for s in suggest.wall]},
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "mlflow_runs_query_s": round(runs_query_s, 3),
        "leaderboard_load_s": round(board_s, 3),
        # `tuner leaderboard NAME` (a table of the best 50) and `--format csv` (every trial), fresh
        # processes; and what a fresh process spends importing MLflow alone, at any run count.
        "leaderboard_cli_s": cli_s["table"],
        "leaderboard_csv_all_cli_s": cli_s["csv_all"],
        "leaderboard_cli_ok": cli_ok,
        "mlflow_import_s": round(import_s, 3),
        "cpus": cpus,
        "mlflow_sends": "in the loop" if sends_in_loop else "sender thread",
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--trial-seconds", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sends-in-loop", action="store_true",
                        help="MLflow writes sent by Ray's loop itself, as before the sender thread (a baseline)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    parser.add_argument("--keep", help="run the search in this (new) folder and keep it, to look at "
                        "its MLflow store afterwards (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.keep:
        Path(args.keep).mkdir(parents=True)
        row = run(Path(args.keep).resolve(), trials=args.trials, slots=args.slots,
                  trial_seconds=args.trial_seconds, epochs=args.epochs, sends_in_loop=args.sends_in_loop)
    else:
        with tempfile.TemporaryDirectory(prefix="tuner-scale-") as scratch:
            row = run(Path(scratch), trials=args.trials, slots=args.slots, trial_seconds=args.trial_seconds,
                      epochs=args.epochs, sends_in_loop=args.sends_in_loop)
    print(f"{row['trials']} trials ({row['trials_errored']} errored), {row['slots']} slots, "
          f"{row['trial_seconds']} s each: {row['wall_s']} s wall vs {row['theoretical_wall_s']} s theoretical")
    for key in ("wall_over_theoretical", "driver_cpu_s_per_trial", "driver_peak_rss_mib",
                "mlflow_runs_query_s", "leaderboard_load_s", "leaderboard_cli_s", "leaderboard_csv_all_cli_s",
                "mlflow_import_s"):
        print(f"  {key:<26}{row[key]}")
    print(f"  {'suggest (last 100) median/p95 s':<26}{row['suggest']['last_100_median_s']} / "
          f"{row['suggest']['last_100_p95_s']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    given = sys.argv[1:] if argv is None else argv
    keep = [i for i, a in enumerate(given) if a == "--keep"]
    if keep:  # where the folder was kept does not change the numbers: left out of the command
        given = given[:keep[0]] + given[keep[0] + 2:]
    command = shlex.join(["python", "bench/scale.py", *given])
    out.write_text(json.dumps({"command": command, **row}, indent=1) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
