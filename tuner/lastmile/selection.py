"""Choosing ensemble members: greedy forward selection (Caruana et al., 2004) on a held-in half.

The candidates' validation softmaxes are computed once; the ensemble is grown one member at a time,
each step adding the candidate whose addition gives the highest accuracy of the combined
prediction on the SELECTION half, ties broken by the lower log-loss (accuracy on a few hundred
images ties often; the log-loss separates them) and then by the candidate's rank. Without
replacement the result is K distinct members of equal weight; with replacement a member may be
picked again, and its weight is the number of picks / K (Caruana's "selection with replacement",
which lets a strong member count double instead of adding a weak one). ``diverse`` prefers a
candidate of an architecture not yet in the ensemble whenever one is left.

The REPORTED accuracy comes from the other half, which no choice looked at: the number a
greedy rule maximises on its own data is optimistic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from tuner.lastmile.ensemble import combine_probabilities


SELECT_BY = ("accuracy", "log-loss")


@dataclass(frozen=True)
class Selection:
    picks: list[int]  # candidate indices in pick order (repeats with replacement)
    steps: list[dict]  # per step: the pick, selection-half accuracy and log-loss after it

    @property
    def weights(self) -> dict[int, float]:
        """Candidate index -> weight (picks / K), in first-pick order."""
        counts: dict[int, int] = {}
        for index in self.picks:
            counts[index] = counts.get(index, 0) + 1
        return {index: count / len(self.picks) for index, count in counts.items()}


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(dim=1) == labels).double().mean()) if len(labels) else 0.0


def log_loss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    picked = probs.double().gather(1, labels.view(-1, 1)).clamp_min(1e-12)
    return float(-picked.log().mean()) if len(labels) else 0.0


def greedy_select(
    member_probs: torch.Tensor, labels: torch.Tensor, k: int, *, combine: str = "geometric",
    replacement: bool = False, archs: Optional[Sequence[str]] = None, select_by: str = "accuracy",
) -> Selection:
    """``member_probs`` [candidates, N, classes] on the selection half, ``labels`` [N].
    ``select_by`` "log-loss" ranks by the log-loss first and the accuracy second."""
    if select_by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, got {select_by!r}")
    candidates = member_probs.shape[0]
    if not replacement and k > candidates:
        raise ValueError(f"cannot pick {k} distinct members from {candidates} candidates")
    picks: list[int] = []
    steps: list[dict] = []
    for _ in range(k):
        pool = [c for c in range(candidates) if replacement or c not in picks]
        if archs is not None:
            unseen = [c for c in pool if archs[c] not in {archs[p] for p in picks}]
            pool = unseen or pool
        scored = []
        for c in pool:
            trial = picks + [c]
            combined = combine_probabilities(member_probs[trial], torch.ones(len(trial)), combine)
            acc, loss = accuracy(combined, labels), log_loss(combined, labels)
            scored.append(((-acc, loss) if select_by == "accuracy" else (loss, -acc), acc, loss, c))
        _, acc, loss, chosen = min(scored)
        picks.append(chosen)
        steps.append({"pick": chosen, "accuracy": acc, "log_loss": loss})
    return Selection(picks, steps)


def split_halves(paths: Sequence[str], labels: Sequence[int], *, salt: str = "tuner-ensemble"
                 ) -> tuple[list[int], list[int]]:
    """(selection, report) indices: each class's images ordered by a hash of their file name and
    dealt alternately, so both halves hold every class about equally and the split does not
    depend on listing order or on the machine (the same folder always splits the same way)."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for index, (path, label) in enumerate(zip(paths, labels)):
        name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
        digest = hashlib.sha256(f"{salt}:{label}:{name}".encode()).hexdigest()
        by_class.setdefault(label, []).append((digest, index))
    select, report = [], []
    for label in sorted(by_class):
        for position, (_, index) in enumerate(sorted(by_class[label])):
            (select if position % 2 == 0 else report).append(index)
    return sorted(select), sorted(report)
