"""What experts train with, measured: the shipped recipes against the journal's default, on real images.

Part 1 (``recipes``): every configuration of ``search_spaces/recipe.yaml``'s ``points_to_evaluate``
(with that spec's ``fixed`` values) against the journal's default recipe, i.e. TrialConfig's defaults
(sgd, lr 0.1, momentum 0.9, weight decay 5e-4, dev-decay, ``light`` augmentation), on the SAME arch,
width, batch size, image size and epochs as the recipe it is compared with, each for 3 seeds, on the
shipped sample (3,000 train / 1,000 val CIFAR-10 photos, 32 px), one process, CPU.
Score: the validation accuracy of the last epoch (equal epochs), median over the seeds.
``gain_points`` = best recipe's median minus its default's median, in accuracy points.

Part 2 (``searches``): 12-trial searches (the real CLI, ``tuner search``) with ``recipe.yaml`` and with
``demo.yaml`` under the same budget (same trials, epochs, ASHA settings, one trial at a time), one
per seed; score: the best val_acc a search found.

Every finished run is saved at once under ``--work`` (``runs/*.json``, ``searches/*.json``), so an
interrupted benchmark resumes where it stopped; the table and ``--out`` are rewritten after each run.

Usage (about 1 h 30 on 2 shared CPU cores; regenerates bench/results/recipes.json):
    nice -n 10 .venv/bin/python bench/recipes.py --work /tmp/recipes_bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainables.config import TrialConfig  # noqa: E402

SAME_AS_RECIPE = ("arch", "width", "batch_size", "epochs", "image_size")  # what the default shares
SEARCH_SAMPLES = 12
COMMAND = "nice -n 10 .venv/bin/python bench/recipes.py --work /tmp/recipes_bench"


def recipe_configs(spec_path: Path) -> dict[str, dict]:
    """label -> trial settings (without data folders) of each shipped recipe point."""
    spec = yaml.safe_load(spec_path.read_text())
    points = spec.get("points_to_evaluate") or []
    configs = {}
    for i, point in enumerate(points):
        values = {**spec.get("fixed", {}), **point, "image_size": spec["data"].get("image_size", 32)}
        configs[f"recipe{i + 1}"] = values
    return configs


def default_for(recipe: dict) -> dict:
    """The journal's default recipe on the recipe's own arch, width, batch size and epochs."""
    return {key: recipe[key] for key in SAME_AS_RECIPE if key in recipe}


def unpack_sample(work: Path) -> Path:
    """The shipped sample and its decoded-image cache (at 32 px the cache trains number for number
    like the JPEG files, tests/trainables/test_runner.py; it only saves decoding time)."""
    data = work / "data"
    if not (data / "train").is_dir():
        from tuner.datasets.demo import unpack_demo_data

        unpack_demo_data(data)
    if not (data / ".cache" / "val_32.parquet").is_file():
        from tuner.datasets.cache import build_caches

        build_caches(data, size=32, workers=1, progress=False)
    return data


def _same_settings(saved: dict, settings: dict) -> bool:
    """A saved run counts if its settings match; keys it predates must hold their default value."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
    return all(saved.get(k, defaults.get(k)) == v for k, v in settings.items())


def run_one(label: str, values: dict, seed: int, data: Path, work: Path) -> dict:
    """Trains one configuration (resumable: a finished run is read back from its JSON)."""
    from trainables.runner import run_trial

    config = TrialConfig.from_dict({**values, "seed": seed, "device": "cpu", "num_workers": 0,
                                    "train_dir": str(data / "train"), "val_dir": str(data / "val")})
    settings = {k: v for k, v in config.to_dict().items() if k not in ("train_dir", "val_dir")}
    target = work / "runs" / f"{label}-seed{seed}.json"
    if target.is_file():
        saved = json.loads(target.read_text())
        if _same_settings(saved["config"], settings):
            return saved
    history: list[dict] = []
    start = time.time()
    run_trial(config, report=lambda metrics, _: history.append(dict(metrics)))
    result = {"label": label, "seed": seed, "config": settings, "history": history,
              "final_val_acc": history[-1]["val_acc"], "epochs_run": history[-1]["epoch"],
              "wall_s": round(time.time() - start, 1)}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1))
    print(f"{label} seed {seed}: val_acc {result['final_val_acc']:.4f} after "
          f"{result['epochs_run']} epochs ({result['wall_s']:.0f} s)", flush=True)
    return result


def recipes_part(spec_path: Path, seeds: list[int], data: Path, work: Path, only: str) -> dict:
    """Seed by seed (a cut-short benchmark still compares equal seeds): each recipe and its default
    (run once per seed when several recipes share arch, width, batch size and epochs)."""
    rows = {}
    for label, values in recipe_configs(spec_path).items():
        default = default_for(values)
        default_label = "default-" + "-".join(f"{k}{default[k]}" for k in SAME_AS_RECIPE if k in default)
        rows[label] = {"recipe": values, "default": default, "default_label": default_label,
                       "runs": {default_label: [], label: []}}
    for seed in seeds:
        for label, row in rows.items():
            for name, settings in ((row["default_label"], row["default"]), (label, row["recipe"])):
                if only == "default" and name == label:
                    continue
                if only == "cached" and not (work / "runs" / f"{name}-seed{seed}.json").is_file():
                    continue
                row["runs"][name].append(run_one(name, settings, seed, data, work))
    return rows


def summarise_recipes(rows: dict) -> dict:
    table, best = [], None
    for label, row in rows.items():
        runs = row["runs"]
        if not runs[label] or not runs[row["default_label"]]:
            continue
        recipe = statistics.median(r["final_val_acc"] for r in runs[label])
        default = statistics.median(r["final_val_acc"] for r in runs[row["default_label"]])
        gain = round(100 * (recipe - default), 2)
        table.append({"recipe": label, "median_val_acc": round(recipe, 4),
                      "default_median_val_acc": round(default, 4), "gain_points": gain,
                      "per_seed": [r["final_val_acc"] for r in runs[label]],
                      "default_per_seed": [r["final_val_acc"] for r in runs[row["default_label"]]],
                      "seeds_done": [len(runs[label]), len(runs[row["default_label"]])],
                      "epochs": row["recipe"].get("epochs")})
        if best is None or gain > best["gain_points"]:
            best = table[-1]
    return {"table": table, "best": best}


# --- part 2: searches through the real CLI ---------------------------------------------------------
def search_spec(source: Path, data: Path, seed: int, epochs: int, out: Path, scheduler: dict) -> Path:
    """A copy of a shipped spec on the sample: same trials, epochs and ASHA for every method."""
    raw = yaml.safe_load(source.read_text())
    raw["data"] = {"train": str(data / "train"), "val": str(data / "val"), "image_size": 32}
    raw["fixed"] = {**raw.get("fixed", {}), "epochs": epochs, "num_workers": 0, "seed": seed}
    raw["sampler"] = {**raw.get("sampler", {}), "seed": seed}
    raw["scheduler"] = scheduler
    raw["budget"] = {"num_samples": SEARCH_SAMPLES, "max_concurrent": 1}
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def best_of_search(storage: Path) -> tuple[float, list[dict]]:
    """Best val_acc over every reported epoch of every trial, read from Ray's result files."""
    trials = []
    for result in sorted(storage.glob("*/result.json")):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        accs = [m["val_acc"] for m in lines if "val_acc" in m]
        if accs:
            trials.append({"trial": result.parent.name, "best_val_acc": max(accs), "epochs": len(accs),
                           "config": {k: v for k, v in lines[-1].get("config", {}).items()
                                      if k not in ("train_dir", "val_dir")}})
    return max((t["best_val_acc"] for t in trials), default=float("nan")), trials


def run_search(method: str, spec_file: Path, seed: int, epochs: int, data: Path, work: Path,
               scheduler: dict) -> dict:
    target = work / "searches" / f"{method}-seed{seed}.json"
    if target.is_file():
        return json.loads(target.read_text())
    name = f"bench-{method}-s{seed}"
    spec = search_spec(spec_file, data, seed, epochs, work / f"{name}.yaml", scheduler)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNER_STORAGE": str(work / "runs-ray")}
    start = time.time()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "tuner"), "search", str(spec), "--name", name,
                           "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"],
                          cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tuner search {name} failed: {proc.stderr[-3000:]}")
    best, trials = best_of_search(work / "runs-ray" / name)
    result = {"method": method, "seed": seed, "best_val_acc": best, "trials": trials,
              "wall_s": round(time.time() - start, 1), "epochs": epochs}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1))
    print(f"search {method} seed {seed}: best val_acc {best:.4f} ({result['wall_s']:.0f} s)", flush=True)
    return result


def searches_part(seeds: list[int], epochs: int, data: Path, work: Path) -> dict:
    demo = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    scheduler = demo["scheduler"]  # the same early stopping for both spaces
    out: dict[str, list] = {"recipe": [], "demo": []}
    for seed in seeds:  # interleaved: a cut-short benchmark still compares equal numbers of seeds
        for method in ("recipe", "demo"):
            spec = ROOT / "search_spaces" / f"{method}.yaml"
            out[method].append(run_search(method, spec, seed, epochs, data, work, scheduler))
    return out


def write_report(path: Path, recipes: dict, searches: dict, args) -> dict:
    summary = summarise_recipes(recipes)
    search_table = {m: {"per_seed": [r["best_val_acc"] for r in runs],
                        "median_best_val_acc": statistics.median([r["best_val_acc"] for r in runs])
                        if runs else None} for m, runs in searches.items()}
    report = {
        "gain_points": summary["best"]["gain_points"] if summary["best"] else None,
        "best_recipe": summary["best"]["recipe"] if summary["best"] else None,
        "metric": "val_acc of the last epoch (equal epochs), median over seeds; gain in points",
        "table": summary["table"],
        "searches": {"num_samples": SEARCH_SAMPLES, "epochs": args.search_epochs, "max_concurrent": 1,
                     "scheduler": "demo.yaml's (asha, grace_period 2, reduction_factor 2) for both",
                     "score": "best val_acc of any trial's any epoch", "table": search_table,
                     "recipe_minus_demo_points": _points(search_table["recipe"]["median_best_val_acc"],
                                                         search_table["demo"]["median_best_val_acc"]),
                     "complete": all(len(runs) == len(args.seeds) for runs in searches.values())},
        "raw": {"recipes": recipes, "searches": searches},
        "seeds": args.seeds,
        "machine": f"{os.cpu_count()} CPU cores (shared), torch threads 1, CPU only",
        "command": COMMAND,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


def _points(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round(100 * (a - b), 1)


def table_lines(report: dict, recipes: dict) -> list[str]:
    lines = ["| recipe | settings | median val_acc | default's median | gain (points) | recipe per seed "
             "| default per seed |", "|---|---|---|---|---|---|---|"]
    for row in report["table"]:
        shown = {k: v for k, v in recipes[row["recipe"]]["recipe"].items()
                 if k not in SAME_AS_RECIPE or k == "width"}  # widths differ between recipes
        lines.append(f"| {row['recipe']} | {', '.join(f'{k}={v}' for k, v in shown.items())} | "
                     f"{row['median_val_acc']:.3f} | {row['default_median_val_acc']:.3f} | "
                     f"{row['gain_points']:+.1f} | {', '.join(f'{v:.3f}' for v in row['per_seed'])} | "
                     f"{', '.join(f'{v:.3f}' for v in row['default_per_seed'])} |")
    for method, row in report["searches"]["table"].items():
        if row["per_seed"]:
            lines.append(f"\nsearch with {method}.yaml: median best val_acc {row['median_best_val_acc']:.3f}, "
                         f"per seed {', '.join(f'{v:.3f}' for v in row['per_seed'])}")
    return lines


def print_table(report: dict, recipes: dict, out: Path) -> None:
    lines = table_lines(report, recipes)
    print("\n" + "\n".join(lines))
    shared = sorted({", ".join(f"{k}={v}" for k, v in row["default"].items()) for row in recipes.values()})
    header = (f"# Shipped recipes vs the journal's default\n\nRegenerate: `{COMMAND}`. Each recipe and its "
              f"default share {'; '.join(shared)}; seeds {report['seeds']}; score: the last epoch's "
              f"val_acc.\n\ngain_points (best recipe minus default, median val_acc points): "
              f"{report['gain_points']}\n\n")
    out.with_suffix(".md").write_text(header + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recipes_bench"),
                        help="scratch folder: sample data, per-run results, search storage")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recipes.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, default=6)
    parser.add_argument("--part", choices=("all", "recipes", "default", "searches", "report"),
                        default="all", help="report: rewrite --out from the runs finished so far")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    data = unpack_sample(args.work)
    spec_path = ROOT / "search_spaces" / "recipe.yaml"
    recipes, searches = {}, {"recipe": [], "demo": []}
    if args.part == "report":
        recipes = recipes_part(spec_path, args.seeds, data, args.work, "cached")
        for method in searches:
            searches[method] = [json.loads(f.read_text()) for f in
                                sorted((args.work / "searches").glob(f"{method}-seed*.json"))]
    if args.part in ("all", "recipes", "default"):
        recipes = recipes_part(spec_path, args.seeds, data, args.work, args.part)
        write_report(args.out, recipes, searches, args)
    if args.part in ("all", "searches"):
        if not recipes:  # keep part 1's finished runs in the report
            recipes = recipes_part(spec_path, args.seeds, data, args.work, "cached")
        searches = searches_part(args.seeds, args.search_epochs, data, args.work)
    print_table(write_report(args.out, recipes, searches, args), recipes, args.out)


if __name__ == "__main__":
    main()
