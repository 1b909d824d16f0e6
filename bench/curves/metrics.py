"""What a search achieved per epoch of compute: anytime curves, epochs to a target, medians over seeds.

An anytime curve has one value per epoch consumed (every trial's every epoch counts, in the order
they ended): the best val_acc seen so far. A search that ends before the budget (a grid that is
done) keeps its best to the end of the budget: it has nothing more to try.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def anytime_best(values: Sequence[float], budget: int) -> np.ndarray:
    """Best-so-far of ``values`` (val_acc per epoch, in the order the epochs ended), ``budget`` long.
    Before any epoch there is no best: an empty search is NaN throughout."""
    values = np.asarray(list(values)[:budget], dtype=float)
    curve = np.full(budget, np.nan)
    if len(values):
        curve[: len(values)] = np.fmax.accumulate(values)
        curve[len(values):] = curve[len(values) - 1]
    return curve


def epochs_to_reach(curve: Sequence[float], target: float) -> Optional[int]:
    """The first number of epochs at which ``curve`` is >= ``target`` (None: never)."""
    reached = np.flatnonzero(np.nan_to_num(np.asarray(curve, dtype=float), nan=-np.inf) >= target)
    return int(reached[0]) + 1 if len(reached) else None


def quantiles(curves: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """Median and inter-quartile range per epoch over seeds."""
    stacked = np.asarray(curves, dtype=float)
    q25, median, q75 = np.nanpercentile(stacked, [25, 50, 75], axis=0)
    return {"median": median, "q25": q25, "q75": q75}


def summarise_method(curves: Sequence[Sequence[float]], target: float) -> dict:
    """Per method: the median curve's epochs to ``target`` and the final best at the budget."""
    q = quantiles(curves)
    finals = np.asarray([c[-1] for c in curves], dtype=float)
    per_seed = [epochs_to_reach(c, target) for c in curves]
    return {
        "epochs_to_target": epochs_to_reach(q["median"], target),
        "epochs_to_target_per_seed": per_seed,
        "seeds_reaching_target": sum(e is not None for e in per_seed),
        "final_best_median": float(np.nanmedian(finals)),
        "final_best_q25": float(np.nanpercentile(finals, 25)),
        "final_best_q75": float(np.nanpercentile(finals, 75)),
        "anytime": {k: [None if np.isnan(x) else round(float(x), 5) for x in v] for k, v in q.items()},
    }


def speedup(baseline_epochs: Optional[int], method_epochs: Optional[int]) -> Optional[float]:
    """How many times fewer epochs the method needs than the baseline (None: it never got there)."""
    if baseline_epochs is None or method_epochs is None:
        return None
    return round(baseline_epochs / method_epochs, 3)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))
