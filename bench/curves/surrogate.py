"""A surrogate over the recorded curves: any configuration of the space -> a whole learning curve.

k nearest recorded configurations, on a standardised encoding (log scale for log parameters, [0, 1]
for ranges and ordered numeric choices, one-hot for named choices, an "active" column for conditional
parameters), each parameter weighted: the weights, k and the distance power are chosen by
leave-one-out error on the recording itself, so a parameter that does not matter stops counting.
The prediction is the distance-weighted mean of the neighbours' curves (val_acc, val_loss, seconds
per epoch), so its shape is a real curve's shape, and continuous values between recorded points get
curves between theirs (as in YAHPO/JAHS, which fit a model over recorded curves).

Noise: a replayed curve is the mean plus one residual curve, drawn by (seed, configuration), from the
spread of configurations recorded with two training seeds (``origin == "repeat"``): the noise has the
size and the epoch-to-epoch correlation a real reseeded run has. Without repeats it falls back to
independent Gaussian noise of half the leave-one-out error per epoch (an assumption, said in ``noise``).

Stored as JSON (no pickle: the driver never unpickles what a worker could have written), with the
recorded data in it, so one file is the whole surrogate; ``python bench/curves/surrogate.py`` fits,
validates on held-out configurations (rank correlation, ``validation.py``) and writes it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORMAT = "tuner-knn-curves/1"
DEFAULT_SURROGATE = ROOT / "bench" / "curves" / "surrogate.json"
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # per-parameter weights tried by the fit
K_GRID = (1, 3, 5, 8, 12)
POWER_GRID = (1.0, 2.0)
CHANCE_ACC = 0.1  # a diverged run's accuracy after it diverged (10 classes)


# --- encoding ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamCode:
    """How one parameter of the space becomes columns of the encoding."""

    name: str
    kind: str  # loguniform | uniform | int | choice | grid
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: tuple = ()
    conditional: bool = False

    @property
    def ordered(self) -> bool:  # numeric choices keep their order: 0.0 < 0.1 < 0.2
        return bool(self.choices) and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                           for c in self.choices)

    def width(self) -> int:
        value_columns = len(self.choices) if self.choices and not self.ordered else 1
        return value_columns + (1 if self.conditional else 0)

    def encode(self, value: Any) -> list[float]:
        active = value is not None
        if self.choices and not self.ordered:
            hot = [0.0] * len(self.choices)
            if active:
                hot[self.choices.index(value)] = 1.0 / np.sqrt(2.0)  # two options differ by 1
            columns = hot
        else:
            columns = [self._scale(value) if active else 0.5]
        return columns + ([1.0 if active else 0.0] if self.conditional else [])

    def _scale(self, value: Any) -> float:
        if self.choices:
            ranked = sorted(self.choices)
            return ranked.index(value) / max(1, len(ranked) - 1)
        low, high, x = float(self.low), float(self.high), float(value)
        if self.log:
            low, high, x = np.log(low), np.log(high), np.log(x)
        return float(np.clip((x - low) / (high - low), 0.0, 1.0))

    @classmethod
    def from_param(cls, param) -> "ParamCode":  # a tuner.spec.space.Param
        return cls(param.name, param.kind, param.low, param.high, param.log, tuple(param.choices),
                   bool(param.when))


def codes_from_space(raw_space: dict) -> tuple[ParamCode, ...]:
    """The encoding of a spec's raw ``space:`` mapping (parsed by the spec parser, its rules apply)."""
    from tuner.spec import parse_spec

    spec = parse_spec({"name": "surrogate", "data": {"train": ".", "val": "."}, "space": raw_space},
                      source="recorded space")
    return tuple(ParamCode.from_param(p) for p in spec.space)


def encode(codes: tuple[ParamCode, ...], params: dict) -> np.ndarray:
    missing = [c.name for c in codes if not c.conditional and c.name not in params]
    if missing:
        raise KeyError(f"configuration lacks the searched parameter(s) {', '.join(missing)}")
    return np.array([x for c in codes for x in c.encode(params.get(c.name))], dtype=float)


def column_owners(codes: tuple[ParamCode, ...]) -> np.ndarray:
    return np.array([i for i, c in enumerate(codes) for _ in range(c.width())], dtype=int)


def stable_seed(params: dict) -> int:
    text = json.dumps(params, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


# --- the kNN -------------------------------------------------------------------------------------

def neighbour_weights(X: np.ndarray, x: np.ndarray, column_weights: np.ndarray, k: int, power: float,
                      exclude: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, normalised weights) of the k nearest rows of X to x."""
    distance = np.sqrt(((X - x) ** 2 * column_weights).sum(axis=1))
    if exclude is not None:
        distance[exclude] = np.inf
    order = np.argsort(distance, kind="stable")[:k]
    near = distance[order]
    if near[0] < 1e-12:  # a recorded configuration: its own curve(s)
        exact = order[near < 1e-12]
        return exact, np.full(len(exact), 1.0 / len(exact))
    weights = 1.0 / near ** power
    return order, weights / weights.sum()


def loo_error(X: np.ndarray, Y: np.ndarray, column_weights: np.ndarray, k: int, power: float,
              groups: np.ndarray) -> float:
    """Mean squared error of predicting each curve from the others (its own group left out)."""
    distance = np.sqrt((((X[:, None, :] - X[None, :, :]) ** 2) * column_weights).sum(axis=2))
    distance[groups[:, None] == groups[None, :]] = np.inf
    order = np.argsort(distance, axis=1, kind="stable")[:, :k]
    near = np.take_along_axis(distance, order, axis=1)
    weights = 1.0 / np.maximum(near, 1e-9) ** power
    weights[~np.isfinite(near)] = 0.0
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    predicted = (weights[:, :, None] * Y[order]).sum(axis=1)
    return float(((predicted - Y) ** 2).mean())


def fit_metric(X: np.ndarray, Y: np.ndarray, owners: np.ndarray, groups: np.ndarray,
               sweeps: int = 3) -> tuple[np.ndarray, int, float]:
    """Per-parameter weights, k and power by coordinate descent on the leave-one-out error."""
    n_params = int(owners.max()) + 1 if len(owners) else 0
    weights = np.ones(n_params)
    k_choices = [k for k in K_GRID if k < len(np.unique(groups))] or [1]
    k, power = k_choices[min(2, len(k_choices) - 1)], 2.0
    best = loo_error(X, Y, weights[owners], k, power, groups)
    for _ in range(sweeps):
        improved = False
        for i in range(n_params):
            for w in WEIGHT_GRID:
                trial = weights.copy()
                trial[i] = w
                if not trial.any():
                    continue
                error = loo_error(X, Y, trial[owners], k, power, groups)
                if error < best - 1e-12:
                    best, weights, improved = error, trial, True
        for k_try, p_try in itertools.product(k_choices, POWER_GRID):
            error = loo_error(X, Y, weights[owners], k_try, p_try, groups)
            if error < best - 1e-12:
                best, k, power, improved = error, k_try, p_try, True
        if not improved:
            break
    return weights, k, power


@dataclass
class Prediction:
    val_acc: np.ndarray  # per epoch
    val_loss: np.ndarray
    seconds: np.ndarray  # recorded seconds per epoch (CPU seconds when recorded, else wall)
    diverged_at: Optional[int]  # the epoch it diverges in (1-based), None: it does not


class Surrogate:
    """Configuration -> curve; build with ``Surrogate.fit`` or ``Surrogate.load``."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.codes = tuple(ParamCode(**{**c, "choices": tuple(c["choices"])}) for c in state["codes"])
        self.epochs = int(state["epochs"])
        self._owners = column_owners(self.codes)
        self._column_weights = np.asarray(state["weights"], dtype=float)[self._owners]
        self._X = np.asarray(state["X"], dtype=float)
        self._acc = np.asarray(state["val_acc"], dtype=float)
        self._loss = np.asarray(state["val_loss"], dtype=float)
        self._seconds = np.asarray(state["seconds"], dtype=float)
        self._diverged = np.asarray(state["diverged_at"], dtype=float)  # 0: it did not
        self._noise_acc = np.asarray(state["noise"]["val_acc"], dtype=float).reshape(-1, self.epochs)
        self._noise_loss = np.asarray(state["noise"]["val_loss"], dtype=float).reshape(-1, self.epochs)
        self._sigma = np.asarray(state["noise"]["sigma"], dtype=float)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.codes)

    @property
    def mean_seconds(self) -> float:
        return float(self._seconds.mean())

    def predict(self, params: dict) -> Prediction:
        """The noise-free curve of ``params``."""
        index, w = neighbour_weights(self._X, encode(self.codes, params), self._column_weights,
                                     int(self.state["k"]), float(self.state["power"]))
        diverged = self._diverged[index] > 0
        diverged_at = None
        if w[diverged].sum() > 0.5:  # most of the neighbourhood diverged: so does this one
            diverged_at = int(round(float(np.average(self._diverged[index][diverged], weights=w[diverged]))))
        return Prediction(w @ self._acc[index], w @ self._loss[index], w @ self._seconds[index], diverged_at)

    def sample(self, params: dict, seed: int, noise_scale: float = 1.0) -> Prediction:
        """The curve one run of ``params`` shows in benchmark seed ``seed`` (deterministic)."""
        mean = self.predict(params)
        rng = np.random.default_rng([seed, stable_seed(params)])
        if len(self._noise_acc):
            pick, sign = rng.integers(len(self._noise_acc)), rng.choice([-1.0, 1.0])
            acc_noise, loss_noise = sign * self._noise_acc[pick], sign * self._noise_loss[pick]
        else:
            acc_noise = rng.normal(0.0, 1.0, self.epochs) * self._sigma
            loss_noise = np.zeros(self.epochs)
        val_acc = np.clip(mean.val_acc + noise_scale * acc_noise, 0.0, 1.0)
        val_loss = np.maximum(mean.val_loss + noise_scale * loss_noise, 0.0)
        return Prediction(val_acc, val_loss, mean.seconds, mean.diverged_at)

    # --- fitting and storage ---

    @classmethod
    def fit(cls, metadata: dict, curves: list, *, tune_metric: bool = True) -> "Surrogate":
        """From a recording's (metadata, curves) as ``recording.read_table`` returns them."""
        codes = codes_from_space(metadata["space"])
        epochs = int(metadata["epochs"])
        X = np.stack([encode(codes, c.params) for c in curves])
        acc, loss, seconds, diverged_at = _curve_arrays(curves, epochs)
        groups = _groups(curves)
        owners = column_owners(codes)
        if tune_metric and len(np.unique(groups)) > 2:
            weights, k, power = fit_metric(X, acc, owners, groups)
        else:
            weights, k, power = np.ones(len(codes)), min(5, max(1, len(curves) - 1)), 2.0
        state = {
            "format": FORMAT, "epochs": epochs, "codes": [_code_dict(c) for c in codes],
            "space_sha256": metadata.get("space_sha256"), "settings": metadata.get("settings"),
            "weights": [float(w) for w in weights], "k": int(k), "power": float(power),
            "X": _rounded(X), "val_acc": _rounded(acc), "val_loss": _rounded(loss),
            "seconds": _rounded(seconds, 3), "diverged_at": [int(d) for d in diverged_at],
            "config_ids": [c.config_id for c in curves],
        }
        state["noise"] = _noise(curves, acc, loss, X, weights[owners], k, power, groups)
        return cls(state)

    def to_json(self) -> str:
        return json.dumps(self.state, separators=(",", ":"))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.write_text(self.to_json())
        partial.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Surrogate":
        state = json.loads(Path(path).read_text())
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} surrogate (format {state.get('format')!r})")
        return cls(state)


def _code_dict(code: ParamCode) -> dict:
    return {"name": code.name, "kind": code.kind, "low": code.low, "high": code.high, "log": code.log,
            "choices": list(code.choices), "conditional": code.conditional}


def _rounded(array: np.ndarray, digits: int = 5) -> list:
    return np.round(np.asarray(array, dtype=float), digits).tolist()


def _curve_arrays(curves: list, epochs: int):
    """Full-length arrays: a diverged curve stays at chance level after it diverged."""
    n = len(curves)
    acc, loss, seconds = np.full((n, epochs), CHANCE_ACC), np.full((n, epochs), np.log(10)), np.zeros((n, epochs))
    diverged_at = np.zeros(n, dtype=int)
    for i, curve in enumerate(curves):
        count = min(epochs, len(curve.epochs["val_acc"]))
        time_column = curve.epochs.get("cpu_s")
        if time_column is None or not np.isfinite(time_column[:count]).all():
            time_column = curve.epochs["epoch_time_s"]
        acc[i, :count] = curve.epochs["val_acc"][:count]
        finite_loss = np.nan_to_num(curve.epochs["val_loss"][:count], nan=np.log(10), posinf=np.log(10))
        loss[i, :count] = finite_loss
        seconds[i, :count] = time_column[:count]
        seconds[i, count:] = np.mean(time_column[:count]) if count else 0.0
        if curve.status == "diverged" and count:
            diverged_at[i] = count  # its last report (epoch `count`) says diverged; chance after it
        elif 0 < count < epochs:  # ended itself early (converged): its weights stay as they were
            acc[i, count:], loss[i, count:] = acc[i, count - 1], loss[i, count - 1]
    return acc, loss, seconds, diverged_at


def _groups(curves: list) -> np.ndarray:
    """Configurations with the same parameters (a repeat and its original) share a group."""
    keys = {}
    return np.array([keys.setdefault(json.dumps(c.params, sort_keys=True), len(keys)) for c in curves])


def _noise(curves, acc, loss, X, column_weights, k, power, groups) -> dict:
    residual_acc, residual_loss = [], []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if len(members) < 2:
            continue
        correction = np.sqrt(len(members) / (len(members) - 1))  # the mean of a few is close to them
        for m in members:
            residual_acc.append((acc[m] - acc[members].mean(axis=0)) * correction)
            residual_loss.append((loss[m] - loss[members].mean(axis=0)) * correction)
    if residual_acc:
        return {"source": f"{len(residual_acc)} residuals of configurations recorded with two seeds",
                "val_acc": _rounded(np.array(residual_acc)), "val_loss": _rounded(np.array(residual_loss)),
                "sigma": _rounded(np.std(residual_acc, axis=0))}
    # No repeats: half the leave-one-out error per epoch (an assumption, not a measurement).
    sigma = np.zeros(acc.shape[1])
    if len(np.unique(groups)) > 1:
        errors = []
        for i in range(len(acc)):
            index, w = neighbour_weights(X, X[i], column_weights, k, power, exclude=i)
            errors.append(acc[i] - w @ acc[index])
        sigma = 0.5 * np.std(errors, axis=0)
    return {"source": "no repeats: Gaussian, half the leave-one-out error per epoch",
            "val_acc": [], "val_loss": [], "sigma": _rounded(sigma)}


def main(argv: Optional[list[str]] = None) -> int:
    from bench.curves.recording import DEFAULT_TABLE
    from bench.curves.validation import fit_and_save

    parser = argparse.ArgumentParser(description="Fit, validate and save the curve surrogate.")
    parser.add_argument("--curves", default=str(DEFAULT_TABLE))
    parser.add_argument("--out", default=str(DEFAULT_SURROGATE))
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    fit_and_save(args.curves, args.out, folds=args.folds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
