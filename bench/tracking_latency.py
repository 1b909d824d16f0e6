"""What Ray's event loop waits for on each MLflow write: sent in the loop, or by the sender thread.

Ray Tune calls the tracking callback from its one event loop, and a trial's next epoch waits until
the loop has handled its report. This drives the product's ``MlflowTracking`` callback the way a
search does (``--concurrency`` trials running, a result every ``--event-gap-ms`` in turn, a new
trial started when one completes its ``--epochs``) against two real stores: a SQLite file, and a
real ``mlflow server`` process on loopback (SQLite behind it, what team mode looks like on one
machine). For each store it runs twice: the writes sent in the loop (``sync``, the callback without
its sender thread) and by the sender thread (``sender``, what ``tuner search`` does).

Reported per row (``bench/results/tracking_latency.json``): the loop's milliseconds per callback
call (median, p95, max) and in all, the seconds ``on_experiment_end`` then takes to send the rest,
the MLflow ``log_batch`` requests made and the operations recorded (fewer requests than log
operations: the sender merged a run's queued logs), and a check that every epoch reached MLflow.

Usage: python bench/tracking_latency.py [--trials 48] [--epochs 5] [--concurrency 8] [--event-gap-ms 20]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlflow.tracking import MlflowClient  # noqa: E402  (after the path is set)

from tuner.tracking.callback import MlflowTracking  # noqa: E402
from tuner.tracking.ui import HOST, port_is_free, server_env, wait_until_up  # noqa: E402


def fake_trial(number: int, data: Path) -> SimpleNamespace:
    """What the callback reads of a Ray Trial: id, config, last result, checkpoints (none here)."""
    config = {"arch": "resnet18", "lr": 0.01 * (1 + number % 7), "batch_size": 64, "optimizer": "sgd",
              "width": 0.5, "epochs": 5, "train_dir": str(data), "val_dir": str(data)}
    return SimpleNamespace(trial_id=f"t{number:05d}", config=config, last_result={"status": "completed"},
                           checkpoint=None, run_metadata=None, status="RUNNING")


def drive(callback: MlflowTracking, *, trials: int, epochs: int, concurrency: int, gap_s: float,
          data: Path) -> list[float]:
    """Feeds the callback a search's hooks in Ray's order; returns the seconds of each call."""
    waits: list[float] = []

    def call(hook, **kwargs) -> None:
        began = time.perf_counter()
        hook(iteration=0, trials=[], **kwargs)
        waits.append(time.perf_counter() - began)
        time.sleep(gap_s)  # the loop's other work, and the time until the next event

    callback.setup(stop=None, num_samples=trials, total_num_samples=trials)
    started, running = 0, []
    while running or started < trials:
        while len(running) < concurrency and started < trials:
            trial = fake_trial(started, data)
            started += 1
            call(callback.on_trial_start, trial=trial)
            running.append([trial, 0])
        for slot in list(running):
            trial, slot[1] = slot[0], slot[1] + 1
            result = {"epoch": slot[1], "training_iteration": slot[1], "val_acc": 0.1 + 0.01 * slot[1],
                      "val_loss": 2.0 - 0.1 * slot[1], "train_loss": 2.1 - 0.1 * slot[1],
                      "epoch_time_s": 1.0, "timestamp": time.time()}
            call(callback.on_trial_result, trial=trial, result=result)
            if slot[1] == epochs:
                trial.last_result, trial.status = result | {"status": "completed"}, "TERMINATED"
                call(callback.on_trial_complete, trial=trial)
                running.remove(slot)
    return waits


def measure(uri: str, work: Path, search: str, *, sender: bool, trials: int, epochs: int, concurrency: int,
            gap_s: float, data: Path) -> dict:
    callback = MlflowTracking(tracking_uri=uri, search_name=search, state_dir=work / "state",
                              artifact_root=work / "mlruns", search_params={"space": {"lr": "loguniform"}},
                              search_tags={}, background_sends=sender)
    counts = {"log_batch": 0, "operations": 0}
    client, writer = callback.writer.client, callback.writer
    log_batch, record = client.log_batch, writer.record

    def counted_log_batch(*args, **kwargs):
        counts["log_batch"] += 1
        return log_batch(*args, **kwargs)

    def counted_record(op):
        counts["operations"] += 1
        record(op)

    client.log_batch, writer.record = counted_log_batch, counted_record
    waits = drive(callback, trials=trials, epochs=epochs, concurrency=concurrency, gap_s=gap_s, data=data)
    began = time.perf_counter()
    callback.on_experiment_end(trials=[])
    close_s = time.perf_counter() - began
    check = MlflowClient(uri)
    experiment = check.get_experiment_by_name(search)
    runs = check.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'", max_results=trials + 10)
    complete = len(runs) == trials and all(
        len(check.get_metric_history(run.info.run_id, "val_acc")) == epochs for run in runs)
    ms = sorted(w * 1000 for w in waits)
    return {"mode": "sender" if sender else "sync", "calls": len(ms),
            "loop_ms_median": round(statistics.median(ms), 2),
            "loop_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 2), "loop_ms_max": round(ms[-1], 2),
            "loop_s_total": round(sum(ms) / 1000, 2), "end_s": round(close_s, 2),
            "operations": counts["operations"], "log_batch_requests": counts["log_batch"],
            "all_epochs_in_mlflow": complete}


def start_server(work: Path) -> tuple[subprocess.Popen, str]:
    port = next(p for p in range(5231, 5300) if port_is_free(p))
    store = f"sqlite:///{work / 'server.db'}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
               "--default-artifact-root", (work / "server-artifacts").as_uri(), "--no-serve-artifacts"]
    process = subprocess.Popen(command, env=server_env(store), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=work)
    wait_until_up(process, port, store, timeout_s=120)
    return process, f"http://{HOST}:{port}"


def run(work: Path, *, trials: int, epochs: int, concurrency: int, gap_s: float) -> list[dict]:
    data = work / "data"
    (data / "class_a").mkdir(parents=True)
    (data / "class_a" / "x.jpg").write_bytes(b"not hashed for its content, only its size")
    rows = []
    server, http_uri = start_server(work)
    try:
        for store in ("sqlite", "http"):
            for sender in (False, True):
                folder = work / f"{store}-{'sender' if sender else 'sync'}"
                folder.mkdir()
                uri = f"sqlite:///{folder / 'mlflow.db'}" if store == "sqlite" else http_uri
                row = measure(uri, folder, f"latency-{folder.name}", sender=sender, trials=trials, epochs=epochs,
                              concurrency=concurrency, gap_s=gap_s, data=data)
                rows.append({"store": store, **row})
                print(f"{store:<7}{row['mode']:<8}loop per call median {row['loop_ms_median']:>7} ms, "
                      f"p95 {row['loop_ms_p95']:>7} ms, max {row['loop_ms_max']:>7} ms, in all "
                      f"{row['loop_s_total']:>6} s; end {row['end_s']:>5} s; {row['log_batch_requests']} "
                      f"log_batch for {row['operations']} writes; complete: {row['all_epochs_in_mlflow']}",
                      flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--event-gap-ms", type=float, default=20.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tracking_latency.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tuner-tracking-latency-") as scratch:
        rows = run(Path(scratch), trials=args.trials, epochs=args.epochs, concurrency=args.concurrency,
                   gap_s=args.event_gap_ms / 1000)
    given = sys.argv[1:] if argv is None else argv
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": shlex.join(["python", "bench/tracking_latency.py", *given]),
        "trials": args.trials, "epochs": args.epochs, "concurrency": args.concurrency,
        "event_gap_ms": args.event_gap_ms, "rows": rows,
    }, indent=1) + "\n")
    print(f"saved {out}")
    return 0 if all(row["all_epochs_in_mlflow"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
