"""Prior-shift calibration: re-weight a classifier's softmax from its training class frequencies to
the class distribution of the data it is asked to predict.

A classifier trained on imbalanced data learns p(y|x) under the training prior s(y); if the test
set's prior t(y) differs (a competition's balanced test set, say), Bayes' rule gives the posterior
under t without retraining (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a
classifier to new a priori probabilities")::

    p'(y|x) = p(y|x) * t(y) / s(y)  /  sum_k p(k|x) * t(k) / s(k)

``--calibrate balanced`` takes t uniform; ``--calibrate file:PRIORS.csv`` reads t from a CSV with the
header ``class,prior`` (counts or fractions, normalised here). s comes from the ``class_counts`` each
checkpoint records (``trainables.trial_state``); for an ensemble, the mean of its members' normalised
priors. The shift is exact only for calibrated probabilities and the true target prior: it moves
decisions towards classes the training set under-represented, it does not fix over- or
under-confidence. See docs/calibration.md.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tuner.errors import UserError
from trainables.checkpoint import load_checkpoint

BALANCED = "balanced"
FILE_PREFIX = "file:"
VALID_FORMS = f"'{BALANCED}' or '{FILE_PREFIX}PRIORS.csv' (a CSV with the header class,prior)"
PRIORS_HEADER = ["class", "prior"]
# A class no training image represents would make t/s infinite. It counts as half an image instead:
# its prior stays the smallest of all, and the shift can favour it by a large but finite factor.
ZERO_COUNT_FLOOR = 0.5
_SHOWN_MISSING = 5  # classes named in the "missing from the priors file" error, the rest counted


def parse_target(spec: str, class_names: list[str]) -> torch.Tensor:
    """The target prior of ``--calibrate SPEC`` over ``class_names`` (float64, sums to 1)."""
    if spec == BALANCED:
        return torch.full((len(class_names),), 1.0 / len(class_names), dtype=torch.float64)
    if spec.startswith(FILE_PREFIX) and spec[len(FILE_PREFIX):]:
        return read_priors_file(spec[len(FILE_PREFIX):], class_names)
    raise UserError(f"--calibrate: unknown value {spec!r}; use {VALID_FORMS}")


def read_priors_file(path: str, class_names: list[str]) -> torch.Tensor:
    """A ``class,prior`` CSV -> the normalised prior in class index order; every rule broken is one
    line naming the file, the line and the class."""
    index = {name: i for i, name in enumerate(class_names)}
    priors: list[float | None] = [None] * len(class_names)
    first_line: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets add a BOM
            rows = csv.reader(handle)
            header = next(rows, None)
            if header is None:
                raise _priors_error(path, 1, "the file is empty; expected the header 'class,prior'")
            if [cell.strip().lower() for cell in header] != PRIORS_HEADER:
                raise _priors_error(path, 1, f"the header must be 'class,prior', got {','.join(header)!r}")
            for row in rows:
                if not row or all(not cell.strip() for cell in row):
                    continue  # a blank line (often the last one) says nothing
                line = rows.line_num
                if len(row) != 2:
                    raise _priors_error(path, line, f"expected 2 fields (class,prior), got {len(row)}")
                name, text = row[0].strip(), row[1].strip()
                if name not in index:
                    raise _priors_error(path, line, f"class {name!r} is not a class of the model")
                if name in first_line:
                    raise _priors_error(path, line, f"class {name!r} appears again (first on line "
                                                    f"{first_line[name]})")
                first_line[name] = line
                priors[index[name]] = _prior_value(path, line, name, text)
    except OSError as err:
        raise UserError(f"--calibrate: {path}: cannot read it ({err.strerror or err})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"--calibrate: {path}: not a readable CSV ({err})") from None
    missing = [name for name in class_names if priors[index[name]] is None]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:_SHOWN_MISSING])
        more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        raise UserError(f"--calibrate: {path}: no row for class(es) {shown}{more} of the model "
                        "(every class needs exactly one)")
    total = math.fsum(priors)
    if total <= 0:
        raise UserError(f"--calibrate: {path}: the priors sum to 0; at least one class needs a prior > 0")
    return torch.tensor(priors, dtype=torch.float64) / total


def _prior_value(path: str, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _priors_error(path, line, f"prior {text!r} of class {name!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise _priors_error(path, line, f"prior {text!r} of class {name!r} must be a finite number >= 0")
    return value


def _priors_error(path: str, line: int, rule: str) -> UserError:
    return UserError(f"--calibrate: {path} line {line}: {rule}")


def training_prior(counts: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
    """The training prior s (float64, sums to 1) from one member's class counts, or the mean of the
    normalised priors of several members (an ensemble trained on the same folder, whose subsets may
    differ in size: each member weighs the same, whatever its image count).

    A class with count 0 counts as ``ZERO_COUNT_FLOOR`` images, so s is never 0.
    """
    table = torch.as_tensor(counts, dtype=torch.float64)
    if table.dim() == 1:
        table = table.unsqueeze(0)
    if table.dim() != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(f"class counts must be a list of ints or a list of such lists, "
                         f"got shape {tuple(table.shape)}")
    if not torch.isfinite(table).all() or (table < 0).any():
        raise ValueError("class counts must be finite and >= 0")
    floored = table.clamp_min(ZERO_COUNT_FLOOR)
    return (floored / floored.sum(dim=1, keepdim=True)).mean(dim=0)


def shift_priors(probs: torch.Tensor, source: torch.Tensor | Sequence[float],
                 target: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """``probs`` [N, K] under the prior ``source`` -> the same rows under ``target`` (float32).

    Computed in float64: the factors t/s stay within a few orders of magnitude (s is floored), so
    the products neither overflow nor lose the small probabilities the shift may promote. A row
    whose every class with t > 0 had probability 0 carries no evidence for any allowed class; it
    becomes the target prior itself rather than 0/0.
    """
    probs64 = torch.as_tensor(probs).to(torch.float64)
    source64 = torch.as_tensor(source, dtype=torch.float64).to(probs64.device)
    target64 = torch.as_tensor(target, dtype=torch.float64).to(probs64.device)
    if probs64.dim() != 2 or source64.shape != (probs64.shape[1],) or target64.shape != source64.shape:
        raise ValueError(f"shift_priors: probabilities {tuple(probs64.shape)} need source and target "
                         f"of shape ({probs64.shape[-1]},), got {tuple(source64.shape)} and "
                         f"{tuple(target64.shape)}")
    if (source64 <= 0).any():
        raise ValueError("shift_priors: every source prior must be > 0 (see training_prior's floor)")
    weighted = probs64 * (target64 / source64)
    totals = weighted.sum(dim=1, keepdim=True)
    fallback = (target64 / target64.sum()).expand_as(weighted)
    shifted = torch.where(totals > 0, weighted / totals.clamp_min(torch.finfo(torch.float64).tiny),
                          fallback)
    return shifted.float()


def checkpoint_class_counts(content: dict, source: str | Path) -> list[int]:
    """The ``class_counts`` a checkpoint recorded, checked against its classes. A checkpoint from
    before they were recorded gets a ``UserError`` that says how to obtain a newer one."""
    counts = content.get("class_counts")
    if counts is None:
        raise UserError(
            f"{source}: --calibrate needs the training class counts, and this checkpoint does not "
            "hold them (it was trained before they were recorded); retrain the trial, or promote the "
            "model from a newer search"
        )
    classes = len(content.get("class_to_idx") or {})
    if (not isinstance(counts, (list, tuple)) or len(counts) != classes
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)):
        raise UserError(f"{source}: its class_counts are damaged (expected {classes} counts >= 0, one "
                        "per class); retrain the trial")
    return [int(n) for n in counts]


def load_class_counts(checkpoint: str | Path) -> list[int]:
    """``checkpoint_class_counts`` of a checkpoint file (or directory), read with weights_only."""
    return checkpoint_class_counts(load_checkpoint(checkpoint), checkpoint)


@dataclass(frozen=True)
class Calibration:
    """A prior shift fixed at promotion/prediction time; ``to_dict`` is what a model card records.

    ``source`` and ``target`` are priors in the model's class index order (each sums to 1).
    """

    target_spec: str  # the --calibrate value it came from (balanced | file:PATH)
    source: list[float]
    target: list[float]

    @classmethod
    def from_counts(cls, target_spec: str, class_names: list[str],
                    counts: Sequence[int] | Sequence[Sequence[int]]) -> "Calibration":
        """``--calibrate target_spec`` for a model (or ensemble) trained on ``counts``."""
        source = training_prior(counts)
        if source.shape[0] != len(class_names):
            raise UserError(f"--calibrate: the model has {len(class_names)} classes but its training "
                            f"class counts cover {source.shape[0]}")
        return cls(target_spec, source.tolist(), parse_target(target_spec, class_names).tolist())

    def apply(self, probs: torch.Tensor) -> torch.Tensor:
        return shift_priors(probs, self.source, self.target)

    def to_dict(self) -> dict:
        return {"method": "prior-shift", "target_spec": self.target_spec,
                "source": [float(p) for p in self.source], "target": [float(p) for p in self.target]}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        try:
            calibration = cls(str(data["target_spec"]), [float(p) for p in data["source"]],
                              [float(p) for p in data["target"]])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"calibration record unreadable ({type(err).__name__}: {err}); expected "
                            "target_spec, source and target") from None
        source, target = calibration.source, calibration.target
        if len(source) != len(target) or not source:
            raise UserError(f"calibration record: source has {len(source)} priors, target {len(target)}")
        if not all(math.isfinite(p) and p > 0 for p in source) or \
                not all(math.isfinite(p) and p >= 0 for p in target) or sum(target) <= 0:
            raise UserError("calibration record: priors must be finite, source > 0, target >= 0 "
                            "with a positive sum")
        return calibration
