"""Records real learning curves for the search benchmark (resumable: run it again to go on).

Trains, with the real trainable (``trainables.runner.run_trial``), the configurations that
``recording.plan_recording`` draws from the spec's ``space:`` (search_spaces/recipe.yaml), every
one for all its epochs, on the shipped CIFAR-10 sample, and keeps each epoch's val_acc, val_loss,
train loss/accuracy, wall seconds and CPU seconds. The table is rewritten (atomically) after every
configuration: stop it at any moment and the next run skips what is already recorded, as long as
the spec's space and the recording settings are unchanged (their hashes are in the table).

Usage:
  nice -n 15 python bench/curves/record.py                      # the benchmark: 150 + priors + repeats
  python bench/curves/record.py --limit 20                       # at most 20 configurations this sitting
  python bench/curves/record.py --out /tmp/smoke.parquet --configs 6 --repeats 1 --epochs 3 \\
      --max-steps-per-epoch 4                                    # a smoke recording in a minute
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.curves.recording import (DEFAULT_SPEC, DEFAULT_TABLE, PlannedConfig,  # noqa: E402
                                    RecordedCurve, RecordingPlan, curve_from_reports, plan_recording,
                                    read_metadata, read_table, trial_dict, write_table)

# Recording settings: CPU-sized (the sample's 3,000 images; resnet18 at the spec's widths, 1/8 or 1/4).
DEFAULT_CONFIGS = 150  # random points, besides the spec's points_to_evaluate
DEFAULT_REPEATS = 10  # random points trained again with seed 1: the seed-to-seed noise
DEFAULT_TRAIN_SUBSET = 1000  # a fixed, seeded subset of the 3,000 training images (~5.5 CPU s an epoch)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def record_one(trial: dict, planned: PlannedConfig, threads: int) -> RecordedCurve:
    """Trains one configuration to its end (in a worker process, or in this one)."""
    import torch

    from trainables.config import TrialConfig
    from trainables.runner import run_trial

    torch.set_num_threads(threads)
    reports: list[dict] = []
    cpu: list[float] = []
    last = [cpu_seconds()]

    def report(metrics: dict, _checkpoint_dir) -> None:
        now = cpu_seconds()
        reports.append(dict(metrics))
        cpu.append(now - last[0])
        last[0] = now

    run_trial(TrialConfig.from_dict(trial), report=report)
    return curve_from_reports(planned, reports, cpu)


def check_resumable(out: Path, plan: RecordingPlan) -> list[RecordedCurve]:
    """The curves already recorded in ``out`` for this very plan (none if there is no file)."""
    if not out.exists():
        return []
    meta = read_metadata(out)
    for key in ("space_sha256", "settings_sha256"):
        if meta.get(key) != getattr(plan, key):
            what = "the spec's space" if key == "space_sha256" else "the recording settings"
            raise SystemExit(
                f"{out}: recorded with another {key} ({meta.get(key, '?')[:12]} != "
                f"{getattr(plan, key)[:12]}): {what} changed since the recording began. "
                "Record into a new --out (or delete the old table) rather than mix two recordings.")
    _, curves = read_table(out)
    planned = {c.config_id for c in plan.configs}
    return [c for c in curves if c.config_id in planned]


def environment() -> dict:
    import platform

    import torch

    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


def record(plan: RecordingPlan, out: Path, *, data: Path, image_size: int, workers: int = 1,
           threads: int = 1, limit: Optional[int] = None, log=print) -> list[RecordedCurve]:
    """Records the plan's missing configurations into ``out``; returns every recorded curve."""
    done = check_resumable(out, plan)
    recorded = {c.config_id for c in done}
    todo = [p for p in plan.configs if p.config_id not in recorded][:limit]
    log(f"{len(done)}/{len(plan.configs)} configurations recorded; {len(todo)} to go this sitting")
    extra = {"environment": environment(), "threads_per_trial": threads}
    trials = {p.config_id: trial_dict(plan, p, train_dir=str(data / "train"), val_dir=str(data / "val"),
                                      image_size=image_size) for p in todo}
    started = time.time()

    def keep(curve: RecordedCurve) -> None:
        done.append(curve)
        write_table(out, done, plan.metadata(recorded=len(done), extra=extra))
        mean_s = (time.time() - started) / max(1, len(done) - len(recorded))  # wall s per configuration
        left = len(plan.configs) - len(done)
        log(f"[{len(done)}/{len(plan.configs)}] {curve.config_id} {curve.origin} {curve.status}: "
            f"val_acc {curve.epochs['val_acc'][-1]:.3f} after {len(curve.epochs['val_acc'])} epochs, "
            f"{curve.epochs['cpu_s'].sum():.0f} CPU s; ~{left * mean_s / 60:.0f} min left")

    if workers <= 1:
        for planned in todo:
            keep(record_one(trials[planned.config_id], planned, threads))
        return done
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(record_one, trials[p.config_id], p, threads) for p in todo]
        for future in as_completed(futures):
            keep(future.result())
    return done


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="the spec whose space is recorded")
    parser.add_argument("--out", default=str(DEFAULT_TABLE))
    parser.add_argument("--configs", type=int, default=DEFAULT_CONFIGS, help="random configurations")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="random configurations recorded again with training seed 1 (noise)")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the random draw")
    parser.add_argument("--epochs", type=int, help="default: the spec's fixed epochs")
    parser.add_argument("--train-subset", type=int, default=DEFAULT_TRAIN_SUBSET)
    parser.add_argument("--max-steps-per-epoch", type=int, help="smoke recordings only")
    parser.add_argument("--workers", type=int, default=1, help="configurations trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--limit", type=int, help="record at most this many configurations now")
    parser.add_argument("--data", help="the unpacked sample (default: unpacked into a temporary folder)")
    args = parser.parse_args(argv)
    overrides = {"train_subset": args.train_subset}
    from trainables.config import TrialConfig

    if "threads" in TrialConfig.__dataclass_fields__:  # a search sets it to the trial's CPU share
        overrides["threads"] = args.threads
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.max_steps_per_epoch:
        overrides["max_steps_per_epoch"] = args.max_steps_per_epoch
    plan = plan_recording(args.spec, random_configs=args.configs, repeats=args.repeats,
                          draw_seed=args.draw_seed, overrides=overrides)
    from bench.curves.recording import read_raw_spec
    from tuner.datasets.demo import unpack_demo_data

    image_size = int(read_raw_spec(args.spec).get("data", {}).get("image_size", 32))
    with tempfile.TemporaryDirectory(prefix="tuner-curves-") as scratch:
        data = Path(args.data or scratch)
        unpack_demo_data(data)
        print(f"space {plan.space_sha256[:12]} of {args.spec}; settings {plan.settings}", flush=True)
        done = record(plan, Path(args.out), data=data, image_size=image_size, workers=args.workers,
                      threads=args.threads, limit=args.limit, log=lambda m: print(m, flush=True))
    complete = len(done) >= len(plan.configs)
    print(f"{args.out}: {len(done)}/{len(plan.configs)} configurations"
          + ("" if complete else " (run again to go on)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
