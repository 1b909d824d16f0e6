"""Which searched parameters mattered, from the search's Optuna study.

The evaluator is PED-ANOVA (``optuna.importance.PedAnovaImportanceEvaluator``, Optuna 5's default):
it needs nothing beyond numpy. fANOVA would need scikit-learn, which this project does not depend on
(it is installed today only because MLflow pulls it in).

Every Optuna evaluator reads COMPLETE trials only. That is also the honest choice here: a PRUNED
trial's last value comes from fewer epochs, a low-fidelity score that would read as a bad
configuration (the searcher tells Optuna PRUNED for the same reason). The report says how many
trials the importances rest on and how many were left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import optuna
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

# PED-ANOVA compares the best 10% of the trials with all of them; below this many, that is one trial
# against a handful, and the shares are noise that would still look like an answer.
MIN_COMPLETE = 5


@dataclass
class Importance:
    complete: int  # COMPLETE trials in the study: what the importances rest on
    pruned: int  # PRUNED trials, left out
    values: dict[str, float] = field(default_factory=dict)  # param -> share of 1, most important first
    note: str = ""  # why there are no values (a sentence), when there are none


def study_importance(study: optuna.Study) -> Importance:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete, pruned = states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED)
    if complete < MIN_COMPLETE:
        return Importance(complete, pruned, note=(
            f"Importance needs at least {MIN_COMPLETE} finished trials (that ran all their "
            f"epochs); this search has {complete}."))
    values = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    return Importance(complete, pruned, values=dict(values))


def search_importance(study: Optional[optuna.Study], study_name: str) -> Importance:
    """``study``: the search's (``load_search_study``), None when its storage has none."""
    if study is None:
        return Importance(0, 0, note=f"No Optuna study named {study_name!r} in the search's storage.")
    return study_importance(study)
