"""ASHA that lets the spec's points_to_evaluate run all their epochs.

The points are recipes the user already trusts ("known-good recipes run first"). ASHA judges every
trial against the others at 1, 3, 9 epochs, and a per-batch one-cycle schedule is still warming up
or at its peak rate there: on the recorded curves of `search_spaces/recipe.yaml`, the best
configuration of all 163 (its AdamW one-cycle point, 0.505 after 15 epochs) reaches 0.37-0.43 at
9 epochs, below the SGD points beside it, and the default search stopped it there. A stopped
trial cannot be resumed, so the best known recipe was lost on those seeds.

Here a point's results still count at every rung (they set the bar for the other trials), but the
point itself is never stopped before its last epoch. Which trials are points is read from their
configuration: a trial whose searched parameters are exactly those of a point, with its values.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler


def is_point(config: Mapping[str, Any], points: Iterable[Mapping[str, Any]], searched: Iterable[str]) -> bool:
    """Whether ``config`` is one of ``points``: every searched parameter it has is in the point, with
    the point's value (a partial point, whose other parameters were sampled, does not count: it is
    not a whole recipe, and its fixed values alone could match ordinary trials)."""
    active = {name for name in searched if name in config}
    return any(set(point) == active and all(config[k] == v for k, v in point.items()) for point in points)


class PointsRunToTheEndASHA(AsyncHyperBandScheduler):
    def __init__(self, *, points: Iterable[Mapping[str, Any]], searched: Iterable[str], **asha: Any):
        super().__init__(**asha)
        self._points = [dict(p) for p in points]
        self._searched = frozenset(searched)
        self._kept: set[str] = set()  # trial ids already known to be points: matched once, not per rung

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.STOP or result.get(self._time_attr, 0) >= self._max_t:
            return action
        if trial.trial_id in self._kept or is_point(trial.config, self._points, self._searched):
            self._kept.add(trial.trial_id)
            self._num_stopped -= 1  # counted as stopped by ASHA; it goes on
            return TrialScheduler.CONTINUE
        return action
