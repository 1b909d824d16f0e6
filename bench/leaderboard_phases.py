"""Where the seconds of ``tuner leaderboard`` go on a 1,000-trial search (MLflow on SQLite).

A store shaped like a finished search (a parent run with the searched params, ``--runs`` trial
runs with the tracking callback's tags and ``--epochs`` epochs of every metric) is written with
MLflow's own client; then, ``--repeats`` times, each in a fresh process as a user runs it:

- ``cli_s``: the whole ``tuner leaderboard NAME`` (the best 50, a table);
- its phases, timed inside one process doing the same: ``import_mlflow_s`` (``mlflow.tracking``),
  ``open_store_s`` (MLflow's SQLAlchemy store: its modules, the engine, the schema check),
  ``import_tuner_s`` (the CLI's and the leaderboard's own modules), ``query_s`` (its ``search_runs``: the
  search's parent, then the best 50 trials), ``render_s`` (the table);
- ``python_s``: a bare interpreter, the floor.

Medians and every repeat go to ``bench/results/leaderboard_phases.json`` (top-level ``cli_s``,
``phases_s``, ``runs``). Run it on an otherwise idle machine.

Usage: python bench/leaderboard_phases.py [--runs 1000] [--epochs 3] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
NAME = "board"
SEARCHED = ("optimizer", "width", "lr", "weight_decay", "schedule", "label_smoothing", "augmentation",
            "aug.erasing", "mixup_alpha", "ema_decay")

# Runs in a fresh process: the leaderboard's steps one after the other, each timed.
PHASES = """
import json, sys, time
t0 = time.perf_counter()
from mlflow.tracking import MlflowClient
t1 = time.perf_counter()
client = MlflowClient(sys.argv[1]); client.get_experiment_by_name(sys.argv[2])
t2 = time.perf_counter()
import tuner.cli
from tuner.tracking.leaderboard import load_board, render
t3 = time.perf_counter()
board = load_board(client, sys.argv[2], top=50)
t4 = time.perf_counter()
render(board)
t5 = time.perf_counter()
print(json.dumps({"import_mlflow_s": t1 - t0, "open_store_s": t2 - t1, "import_tuner_s": t3 - t2,
                  "query_s": t4 - t3, "render_s": t5 - t4, "rows": len(board.entries)}))
"""


def write_store(uri: str, artifacts: Path, *, runs: int, epochs: int) -> None:
    """A finished search's MLflow records, as the tracking callback leaves them."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from tuner.tracking.tags import KIND_TAG, METRIC_NAMES, PARENT_TAG, SEARCH_TAG, STATUS_TAG, TRIAL_TAG

    client, rng = MlflowClient(uri), random.Random(0)
    experiment = client.create_experiment(NAME, artifact_location=artifacts.as_uri())
    parent = client.create_run(experiment, run_name=f"search {NAME}", tags={KIND_TAG: "search", SEARCH_TAG: NAME})
    client.log_batch(parent.info.run_id, params=[Param("metric", "val_acc"), Param("mode", "max"),
                                                 *(Param(f"space.{k}", "choice") for k in SEARCHED)])
    for i in range(runs):
        run = client.create_run(experiment, run_name=f"trial {i}", tags={
            KIND_TAG: "trial", SEARCH_TAG: NAME, PARENT_TAG: parent.info.run_id, TRIAL_TAG: f"{i:08x}",
            STATUS_TAG: rng.choice(("completed", "early_stopped"))})
        now, best, metrics = int(time.time() * 1000), 0.0, []
        for epoch in range(1, epochs + 1):
            values = {name: rng.random() for name in METRIC_NAMES}
            values["epoch"] = epoch
            best = max(best, values["val_acc"])
            metrics += [Metric(k, v, now + epoch, epoch) for k, v in {**values, "best_val_acc": best}.items()]
        params = [Param(k, str(round(rng.random(), 6))) for k in SEARCHED] + [Param("epochs", str(epochs))]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id)


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - began, done.stdout


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "leaderboard_phases.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="leaderboard-") as folder:
        work = Path(folder)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        began = time.perf_counter()
        write_store(uri, work / "artifacts", runs=args.runs, epochs=args.epochs)
        print(f"{args.runs} trial runs written in {time.perf_counter() - began:.0f} s")
        cli = [sys.executable, "-m", "tuner.cli", "leaderboard", NAME, "--tracking-uri", uri]
        timed(cli, work)  # warm-up: the libraries into the page cache
        repeats = []
        for _ in range(args.repeats):
            cli_s, table = timed(cli, work)
            phases = json.loads(timed([sys.executable, "-c", PHASES, uri, NAME], work)[1])
            python_s, _ = timed([sys.executable, "-c", "pass"], work)
            repeats.append({"cli_s": round(cli_s, 3), "python_s": round(python_s, 3),
                            **{k: round(v, 3) if isinstance(v, float) else v for k, v in phases.items()},
                            "table_lines": len(table.splitlines())})
    phase_names = ("import_mlflow_s", "open_store_s", "import_tuner_s", "query_s", "render_s")
    median = {k: round(statistics.median(r[k] for r in repeats), 3) for k in ("cli_s", "python_s", *phase_names)}
    given = sys.argv[1:] if argv is None else argv
    result = {
        "command": "python bench/leaderboard_phases.py " + shlex.join(given),
        "runs": args.runs, "epochs": args.epochs, "cli_s": median["cli_s"],
        "phases_s": {k: median[k] for k in phase_names},
        "mlflow_share_s": round(median["import_mlflow_s"] + median["open_store_s"], 3),
        "python_s": median["python_s"], "cpus": os.cpu_count(), "repeats": repeats,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'phase':18s} {'seconds':>8s}")
    for name in ("cli_s", *phase_names, "python_s"):
        print(f"{name:18s} {median[name]:8.2f}")
    print(f"MLflow's import and store: {result['mlflow_share_s']:.2f} s of the {median['cli_s']:.2f} s; saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
