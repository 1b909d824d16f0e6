"""How well the surrogate predicts curves it has not seen: k-fold over recorded configurations,
rank correlation of held-out val_acc per epoch; and the fit-validate-save step the benchmark runs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from bench.curves.surrogate import Surrogate, _curve_arrays, _groups


# --- validation --------------------------------------------------------------------------------

def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = np.argsort(values, kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values), dtype=float)
        for value in np.unique(values):  # ties share their mean rank
            tied = values == value
            result[tied] = result[tied].mean()
        return result
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def validate(metadata: dict, curves: list, *, folds: int = 5, seed: int = 0) -> dict:
    """Held-out accuracy of the surrogate: k-fold over configurations (a repeat stays with its
    original), predicting held-out curves from the rest; rank correlation per epoch checked."""
    groups = _groups(curves)
    unique = np.unique(groups)
    folds = max(2, min(folds, len(unique)))
    assignment = dict(zip(np.random.default_rng(seed).permutation(unique), itertools.cycle(range(folds))))
    epochs = int(metadata["epochs"])
    truth, predicted = np.zeros((len(curves), epochs)), np.zeros((len(curves), epochs))
    actual, _, _, _ = _curve_arrays(curves, epochs)
    for fold in range(folds):
        held = [i for i, g in enumerate(groups) if assignment[g] == fold]
        kept = [c for i, c in enumerate(curves) if assignment[groups[i]] != fold]
        model = Surrogate.fit(metadata, kept)
        for i in held:
            predicted[i] = model.predict(curves[i].params).val_acc
            truth[i] = actual[i]
    checked = sorted({1, min(3, epochs), min(9, epochs), epochs})
    return {
        "folds": folds, "configurations": len(curves),
        "spearman_by_epoch": {str(e): round(spearman(truth[:, e - 1], predicted[:, e - 1]), 4) for e in checked},
        "spearman_final": round(spearman(truth[:, -1], predicted[:, -1]), 4),
        "mae_final": round(float(np.abs(truth[:, -1] - predicted[:, -1]).mean()), 4),
        "top10_overlap": _top_overlap(truth[:, -1], predicted[:, -1], 10),
    }


def _top_overlap(truth: np.ndarray, predicted: np.ndarray, n: int) -> float:
    n = min(n, len(truth))
    return round(len(set(np.argsort(-truth)[:n]) & set(np.argsort(-predicted)[:n])) / max(1, n), 3)


def fit_and_save(curves_path: str | Path, out: str | Path, *, folds: int = 5, log=print) -> Surrogate:
    from bench.curves.recording import file_sha256, read_table

    metadata, curves = read_table(curves_path)
    surrogate = Surrogate.fit(metadata, curves)
    surrogate.state["recording_sha256"] = file_sha256(curves_path)
    surrogate.state["validation"] = validate(metadata, curves, folds=folds)
    surrogate.save(out)
    v = surrogate.state["validation"]
    log(f"surrogate over {len(curves)} curves: k={surrogate.state['k']}, power={surrogate.state['power']}, "
        f"weights {dict(zip(surrogate.param_names, surrogate.state['weights']))}")
    log(f"held-out ({v['folds']}-fold) Spearman of val_acc by epoch {v['spearman_by_epoch']}, "
        f"MAE final {v['mae_final']}, top-10 overlap {v['top10_overlap']}; noise: "
        f"{surrogate.state['noise']['source']}; saved {out}")
    return surrogate
