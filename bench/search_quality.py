"""How good is the search per epoch of compute? Search methods on recorded learning curves.

Every method (bench/curves/methods.py: random+FIFO, random+ASHA, the journal's grid, today's default,
plain Optuna TPE+Hyperband, Ray's own OptunaSearch+ASHA, GPSampler+ASHA, the candidates) searches the space
recorded in bench/curves/curves.parquet; the Ray methods run the REAL driver with a trainable that
replays the surrogate's curves in simulated time (bench/curves/virtual_clock.py: epochs are reported
in the order they end in recorded seconds, so a seed gives the same search every run), 2-8 trials at once.
Per method and seed: the anytime curve (best val_acc vs epochs consumed). Reported: median + IQR
curves (PNG), the epochs each method's median curve needs to reach random+FIFO's final median best,
the final best at the budget, ``speedup_vs_random`` of the default, and sampler overhead (p95 of one
suggestion with 500 finished trials).

Seeds 0-19 are for choosing defaults (--seed-set tuning); reported numbers come from seeds 20-39
(--seed-set report, the default).

Usage:
  python bench/search_quality.py                                  # all methods, seeds 20-39
  python bench/search_quality.py --seed-set tuning --methods random+fifo,default,tpe+asha-g3
  python bench/search_quality.py --resume     # after an interruption: methods already saved are kept
  python bench/search_quality.py --curves /tmp/smoke.parquet --surrogate /tmp/smoke.json \\
      --seeds 2 --methods random+fifo,default --budget-trials 4 --out /tmp/sq.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.curves import candidates, replay  # noqa: E402, F401 (candidates: registers --methods names)
from bench.curves.methods import (BASELINE_METHOD, DEFAULT_METHOD, DEFAULT_METHODS, METHODS, Bench,  # noqa: E402
                                  bench_spec, get_method, register_gp_sampler)
from bench.curves.metrics import anytime_best, percentile, speedup, summarise_method  # noqa: E402
from bench.curves.recording import (DEFAULT_SPEC, DEFAULT_TABLE, file_sha256, read_metadata,  # noqa: E402
                                    read_raw_spec, space_sha256)
from bench.curves.surrogate import DEFAULT_SURROGATE, Surrogate  # noqa: E402
from bench.curves.validation import fit_and_save  # noqa: E402

# "tuning-more": further tuning seeds, for a candidate the first 20 could not tell from the default
SEED_SETS = {"tuning": range(0, 20), "report": range(20, 40), "tuning-more": range(40, 60)}
DEFAULT_OUT = ROOT / "bench" / "results" / "search_quality.json"


def load_surrogate(curves: Path, path: Path, log=print) -> Surrogate:
    """The surrogate of ``curves``; refitted (and saved) when missing or fitted to another file."""
    wanted = file_sha256(curves)
    if path.exists():
        model = Surrogate.load(path)
        if model.state.get("recording_sha256") == wanted:
            return model
        log(f"{path} was fitted to another recording: refitting")
    return fit_and_save(curves, path, log=log)


def kept_results(out: Path, conditions: dict) -> dict[str, list[dict]]:
    """Per-seed rows of the methods an earlier run under the same conditions already saved in ``out``."""
    if not out.exists():
        return {}
    earlier = json.loads(out.read_text())
    if earlier.get("conditions") != conditions:
        print(f"{out} was made under other conditions: nothing kept", flush=True)
        return {}
    return {name: row["per_seed"] for name, row in earlier.get("methods", {}).items()
            if name in METHODS and len(row.get("per_seed", [])) == len(conditions["seeds"])}


def check_space(raw_spec: dict, metadata: dict, spec_path: Path) -> None:
    if space_sha256(raw_spec) != metadata["space_sha256"]:
        raise SystemExit(
            f"{spec_path}'s space (sha256 {space_sha256(raw_spec)[:12]}) is not the recorded one "
            f"({metadata['space_sha256'][:12]}): record it again (bench/curves/README.md), or pass "
            "--spec with the spec the curves were recorded from")


def start_ray(concurrency: int) -> None:
    import ray

    replay.prepare_driver()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=max(2, concurrency), num_gpus=0, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)


def run_method(name: str, bench: Bench, seeds: list[int], log=print) -> list[dict]:
    rows = []
    for seed in seeds:
        run = get_method(name).run(bench, seed)
        values = [e["val_acc"] for e in run.events]
        curve = anytime_best(values, bench.budget_epochs)
        best = max(run.events[: bench.budget_epochs], key=lambda e: e["val_acc"], default=None)
        rows.append({"seed": seed, "curve": [None if np.isnan(x) else round(float(x), 4) for x in curve],
                     "epochs_used": min(len(values), bench.budget_epochs), "trials": run.trials,
                     "wall_s": round(run.wall_s, 2), "final_best": None if best is None else best["val_acc"],
                     "best_params": None if best is None else best.get("params"), **run.notes})
        log(f"  {name} seed {seed}: {rows[-1]['epochs_used']} epochs, {run.trials} trials, "
            f"best {rows[-1]['final_best']}, {run.wall_s:.1f} s")
    return rows


def summarise(per_method: dict[str, list[dict]], budget: int) -> tuple[Optional[float], dict]:
    curves = {m: [[np.nan if x is None else x for x in r["curve"]] for r in rows] for m, rows in per_method.items()}
    target = None
    if BASELINE_METHOD in curves:
        target = float(np.nanmedian([c[-1] for c in curves[BASELINE_METHOD]]))
    table = {}
    for name, method_curves in curves.items():
        summary = summarise_method(method_curves, target if target is not None else np.inf)
        table[name] = {"summary": METHODS[name].summary, **summary, "per_seed": per_method[name]}
    return target, table


def sampler_overhead(bench: Bench, *, samplers: list[str], finished: int, samples: int, work: Path) -> dict:
    """p95 seconds of one suggestion (ask + the define-by-run space) once ``finished`` trials are done,
    on the journal file a search keeps its study in (``tuner/search/study_storage.py``); each timed
    trial is then told and counts."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tuner.search.samplers import build_sampler
    from tuner.search.space import define_by_run

    register_gp_sampler()
    space_spec = bench_spec(bench, 0, "overhead", priors=False)

    def value(params: dict) -> float:  # the surrogate's noise-free final accuracy
        return float(bench.surrogate.predict(params).val_acc[-1])
    space = define_by_run(space_spec.space)
    result = {}
    for name in samplers:
        storage = JournalStorage(JournalFileBackend(str(work / f"overhead-{name}.journal")))
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(finished):
            trial = study.ask()
            space(trial)
            study.tell(trial, value(trial.params))
        study.sampler = build_sampler(name, space=space_spec.space, seed=0,
                                      options=_sampler_options(name), max_concurrent=bench.concurrency)
        timings = []
        for _ in range(samples):
            start = time.perf_counter()
            trial = study.ask()
            space(trial)
            timings.append(time.perf_counter() - start)
            study.tell(trial, value(trial.params))
        result[name] = {"p95_s": round(percentile(timings, 95), 4), "median_s": round(percentile(timings, 50), 4),
                        "samples": samples, "finished_trials": finished, "storage": "journal"}
    return result


def _sampler_options(name: str) -> dict:
    from tuner.search.options import check_options
    from tuner.search.samplers import SAMPLERS

    def fail(key, rule):
        raise ValueError(f"{key}: {rule}")

    return check_options({}, SAMPLERS.get(name).options, where="sampler.options", fail=fail)


def plot(table: dict, target: Optional[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, row in table.items():
        median = np.array([np.nan if x is None else x for x in row["anytime"]["median"]])
        q25 = np.array([np.nan if x is None else x for x in row["anytime"]["q25"]])
        q75 = np.array([np.nan if x is None else x for x in row["anytime"]["q75"]])
        x = np.arange(1, len(median) + 1)
        (line,) = ax.plot(x, median, label=name, lw=2 if name == DEFAULT_METHOD else 1.2)
        ax.fill_between(x, q25, q75, color=line.get_color(), alpha=0.12)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"{BASELINE_METHOD} final median")
    ax.set_xlabel("epochs consumed (all trials)")
    ax.set_ylabel("best val_acc so far (median, IQR)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(table: dict, target: Optional[float], budget: int) -> None:
    print(f"\ntarget: {BASELINE_METHOD}'s final median best = {target}; budget {budget} epochs")
    print(f"{'method':<24}{'epochs→target':>14}{'seeds there':>12}{'final best (IQR)':>24}")
    for name, row in table.items():
        reached = f"{row['seeds_reaching_target']}/{len(row['per_seed'])}"
        print(f"{name:<24}{str(row['epochs_to_target']):>14}{reached:>12}"
              f"{row['final_best_median']:>10.4f} ({row['final_best_q25']:.4f}-{row['final_best_q75']:.4f})")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--curves", default=str(DEFAULT_TABLE))
    parser.add_argument("--surrogate", default=str(DEFAULT_SURROGATE), help="refitted if stale")
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="the spec (its space must be the recorded one)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated; registered: {', '.join(sorted(METHODS))}")
    parser.add_argument("--seed-set", choices=sorted(SEED_SETS), default="report",
                        help="tuning: seeds 0-19 (choose defaults with these); report: seeds 20-39; "
                             "tuning-more: seeds 40-59 (more tuning seeds)")
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds of the set")
    parser.add_argument("--budget-trials", type=float, default=20,
                        help="the epoch budget, in full trials (x the recorded epochs)")
    parser.add_argument("--concurrency", type=int, default=4, help="trials at once (2-8)")
    parser.add_argument("--clock", choices=("simulated", "wall"), default="simulated",
                        help="simulated: epochs are reported in recorded-time order, a run is repeatable "
                             "(bench/curves/virtual_clock.py); wall: each epoch sleeps (--epoch-sleep-s)")
    parser.add_argument("--epoch-sleep-s", type=float, default=0.05,
                        help="--clock wall: a mean recorded epoch sleeps this long (sets the time factor)")
    parser.add_argument("--priors", choices=("none", "all"), default="none",
                        help="every method starts from the spec's points_to_evaluate (all) or none does")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--resume", action="store_true",
                        help="keep the methods --out already holds from a run under the same conditions")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--overhead-samplers", default="tpe,gp,random")
    parser.add_argument("--overhead-finished", type=int, default=500)
    parser.add_argument("--overhead-samples", type=int, default=20)
    return parser.parse_args(argv)


def run_conditions(args, seeds: list[int], budget: int, time_factor: float, curves_path: Path,
                   surrogate_path: Path) -> dict:
    """What a kept result must share with this run to be reused by --resume."""
    return {
        "seeds": seeds, "budget_epochs": budget, "concurrency": args.concurrency,
        "clock": args.clock, "time_factor": round(time_factor, 6) if args.clock == "wall" else None,
        "priors": args.priors,
        "curves_sha256": file_sha256(curves_path), "surrogate_sha256": file_sha256(surrogate_path),
    }


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves_path, surrogate_path, spec_path = Path(args.curves), Path(args.surrogate), Path(args.spec)
    metadata = read_metadata(curves_path)
    raw_spec = read_raw_spec(spec_path)
    check_space(raw_spec, metadata, spec_path)
    model = load_surrogate(curves_path, surrogate_path)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in methods:
        get_method(name)  # an unknown name fails before anything runs
    seeds = list(SEED_SETS[args.seed_set])[: args.seeds]
    budget = int(round(args.budget_trials * model.epochs))
    time_factor = args.epoch_sleep_s / max(model.mean_seconds, 1e-9)
    out = Path(args.out)
    given = sys.argv[1:] if argv is None else argv
    # --resume changes where results come from, not what they are: left out, so that the command
    # regenerates the file from scratch rather than keeping what the file already holds.
    command = shlex.join(["python", "bench/search_quality.py", *(a for a in given if a != "--resume")])
    conditions = run_conditions(args, seeds, budget, time_factor, curves_path, surrogate_path)
    kept = kept_results(out, conditions) if args.resume else {}
    start_ray(args.concurrency)

    def save(per_method: dict, overhead: Optional[dict]) -> dict:
        target, table = summarise(per_method, budget)
        default_epochs = table.get(DEFAULT_METHOD, {}).get("epochs_to_target")
        baseline_epochs = table.get(BASELINE_METHOD, {}).get("epochs_to_target")
        result = {
            "command": command,
            "seeds": seeds, "seed_set": args.seed_set,
            "default": DEFAULT_METHOD, "baseline": BASELINE_METHOD,
            "speedup_vs_random": speedup(baseline_epochs, default_epochs),
            "target": target, "budget_epochs": budget, "epochs_per_trial": model.epochs,
            "concurrency": args.concurrency, "clock": args.clock,
            "time_factor": time_factor if args.clock == "wall" else None, "priors": args.priors,
            "conditions": conditions,
            "files": {"curves": {"path": _shown(curves_path), "sha256": conditions["curves_sha256"]},
                      "surrogate": {"path": _shown(surrogate_path), "sha256": conditions["surrogate_sha256"]}},
            "space_sha256": metadata["space_sha256"], "recording": {k: metadata.get(k) for k in
                                                                   ("settings", "configs_recorded", "complete")},
            "surrogate_validation": model.state.get("validation"),
            "sampler_overhead": overhead,
            "methods": table,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".part")
        partial.write_text(json.dumps(result, indent=1))
        partial.replace(out)  # a killed run leaves the last complete file, never half of one
        return result

    with tempfile.TemporaryDirectory(prefix="tuner-sq-") as scratch:
        bench = Bench(model, {**raw_spec, "space": metadata["space"]}, budget, args.concurrency, time_factor,
                      Path(scratch), priors=args.priors == "all", clock=args.clock)
        per_method = {}
        for name in methods:
            if name in kept:
                print(f"{name}: kept from {out} ({len(kept[name])} seeds)", flush=True)
                per_method[name] = kept[name]
            else:
                print(f"{name}: {METHODS[name].summary}", flush=True)
                per_method[name] = run_method(name, bench, seeds, log=lambda m: print(m, flush=True))
            save(per_method, None)  # after every method: a long run can be resumed (--resume)
        overhead = None
        if not args.skip_overhead:
            overhead = sampler_overhead(bench, samplers=args.overhead_samplers.split(","),
                                        finished=args.overhead_finished, samples=args.overhead_samples,
                                        work=Path(scratch))
    result = save(per_method, overhead)
    table, target = result["methods"], result["target"]
    plot(table, target, out.with_suffix(".png"),
         f"{len(seeds)} seeds ({args.seed_set}), {args.concurrency} at once, budget {budget} epochs, "
         f"priors: {args.priors}, {args.clock} clock")
    print_table(table, target, budget)
    if overhead:
        print("sampler overhead, one suggestion with", args.overhead_finished, "finished trials:", overhead)
    print(f"speedup_vs_random ({DEFAULT_METHOD}): {result['speedup_vs_random']}; saved {out} and "
          f"{out.with_suffix('.png')}")
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
