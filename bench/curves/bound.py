"""How fast can any search reach the target on this recording? A bound from the recorded curves.

The benchmark's target is random + FIFO's final median best (0.458 at 300 epochs). In the recording
only a few of the 150 configurations drawn at random from the space ever reach it, and those only
after 11-13 epochs. Whatever the sampler, a search reaches the target when one of them has trained
that long, and with 4 trials at once the other slots spend epochs meanwhile. This script measures,
on the recorded curves themselves (no surrogate), the epochs a search needs:

* ``oracle``: random sampling with a perfect stopping rule (every configuration that will never
  reach the target is stopped after one epoch, one that will runs until it does): the best any
  scheduler can do for a random sampler;
* ``asha``: random sampling with ASHA's rule (grace 1, reduction factor 3, rungs 1, 3, 9) on the
  recorded values: a check of the simplification against the benchmark's random + ASHA;
* ``asha`` with a sampler that draws the configurations able to reach the target ``k`` times as
  often as random sampling does, from the first trial on: how much better than random a model must
  sample to meet a given number of epochs.

Simplification: every epoch takes the same time (the slots advance together), one epoch per
configuration per step; the real benchmark uses the recorded seconds. Outputs a table and a JSON
with every simulation's epochs (``--out``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.curves.recording import file_sha256, read_table  # noqa: E402  (after the path set-up)


def crossing_epochs(curves: list[np.ndarray], target: float) -> list[Optional[int]]:
    """Per curve, the first epoch whose val_acc reaches ``target`` (None: never)."""
    return [next((i + 1 for i, acc in enumerate(curve) if acc >= target), None) for curve in curves]


def epochs_to_target(curves: list[np.ndarray], target: float, rng: np.random.Generator, *,
                     rule: str, slots: int = 4, boost: float = 1.0, reduction_factor: float = 3.0,
                     max_epochs: int = 5000) -> Optional[int]:
    """One simulated search: epochs consumed (all slots) until some trial reaches ``target``.

    ``rule`` "oracle" stops a configuration that never reaches the target after one epoch; "asha"
    applies ASHA's asynchronous rule at rungs 1, rf, rf^2, ... ``boost`` multiplies the chance of
    drawing a configuration that reaches the target."""
    crossing = crossing_epochs(curves, target)
    return _one_search(curves, crossing, _draw_weights(crossing, boost), target, rng, rule=rule, slots=slots,
                       reduction_factor=reduction_factor, max_epochs=max_epochs)


def _draw_weights(crossing: list[Optional[int]], boost: float) -> np.ndarray:
    weights = np.array([boost if c else 1.0 for c in crossing])
    return weights / weights.sum()


def _one_search(curves, crossing, weights, target, rng, *, rule, slots, reduction_factor,
                max_epochs) -> Optional[int]:
    length = min(len(c) for c in curves)
    rungs = [int(round(reduction_factor ** i)) for i in range(8) if reduction_factor ** i < length]
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    running: list[Optional[list]] = [None] * slots  # [curve index, epochs done]
    spent = 0
    while spent < max_epochs:
        for s in range(slots):
            if running[s] is None:
                running[s] = [int(rng.choice(len(curves), p=weights)), 0]
        for s in range(slots):
            index, done = running[s]
            done += 1
            spent += 1
            acc = float(curves[index][done - 1])
            if acc >= target:
                return spent
            running[s] = [index, done]
            if done >= len(curves[index]):
                running[s] = None
            elif rule == "oracle":
                if crossing[index] is None:
                    running[s] = None
            elif done in recorded:
                rung = recorded[done]
                if rung and acc < np.percentile(rung, (1 - 1 / reduction_factor) * 100):
                    running[s] = None
                rung.append(acc)
    return None


def simulate(curves, target, *, rule, boost, runs, seed, slots, max_epochs: int = 5000) -> list[Optional[int]]:
    """``runs`` searches (``epochs_to_target``) from one generator seeded ``seed``."""
    rng = np.random.default_rng(seed)
    crossing = crossing_epochs(curves, target)  # the same for every run: computed once
    weights = _draw_weights(crossing, boost)
    return [_one_search(curves, crossing, weights, target, rng, rule=rule, slots=slots, reduction_factor=3.0,
                        max_epochs=max_epochs) for _ in range(runs)]


def summary(values: list[Optional[int]], within: int) -> dict:
    reached = np.array([v if v is not None else np.inf for v in values], dtype=float)
    return {"median": float(np.median(reached)), "q25": float(np.percentile(reached, 25)),
            "q75": float(np.percentile(reached, 75)), "share_within": float(np.mean(reached <= within))}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curves", default=str(ROOT / "bench" / "curves" / "curves.parquet"))
    parser.add_argument("--target", type=float, action="append",
                        help="val_acc to reach (repeatable; default: the targets of the 300- and 900-epoch "
                             "benchmarks, 0.4583 and 0.4786)")
    parser.add_argument("--within", type=int, action="append",
                        help="the epochs each target must be reached in (default: a third of random + "
                             "FIFO's epochs in those benchmarks: 94 and 252)")
    parser.add_argument("--boosts", default="1,2,3,5", help="sampler boosts to try with ASHA, comma-separated")
    parser.add_argument("--runs", type=int, default=2000, help="simulated searches per row")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="save the JSON here")
    args = parser.parse_args(argv)
    targets = args.target or [0.4583, 0.4786]
    within = args.within or [94, 252]
    if len(within) != len(targets):
        parser.error("give one --within per --target")

    _, recorded = read_table(args.curves)
    curves = [c.epochs["val_acc"] for c in recorded if c.origin == "random"]  # what random sampling draws
    rows = []
    for target, limit in zip(targets, within):
        crossing = crossing_epochs(curves, target)
        reach = sorted(c for c in crossing if c)
        print(f"target {target:.4f}: {len(reach)} of {len(curves)} random configurations reach it, "
              f"at epochs {reach}; {limit} epochs is the goal")
        plans = [("oracle", 1.0)] + [("asha", float(b)) for b in args.boosts.split(",")]
        for rule, boost in plans:
            values = simulate(curves, target, rule=rule, boost=boost, runs=args.runs, seed=args.seed,
                              slots=args.slots)
            row = {"target": target, "within": limit, "rule": rule, "boost": boost,
                   **summary(values, limit), "epochs": values}
            rows.append(row)
            print(f"  {rule:6s} sampler x{boost:<4g} median {row['median']:6.0f}  IQR {row['q25']:.0f}-"
                  f"{row['q75']:.0f}  reached within {limit}: {row['share_within']:.0%}")
    if args.out:
        report = {"command": "python bench/curves/bound.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                  "curves_sha256": file_sha256(args.curves), "random_configurations": len(curves),
                  "slots": args.slots, "runs": args.runs, "seed": args.seed, "rows": rows}
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
