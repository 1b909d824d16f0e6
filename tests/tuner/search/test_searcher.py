"""Our OptunaSearch, driven the way Ray drives it: what the study learns about each trial."""

from __future__ import annotations

import optuna
import pytest

from tuner.places import SearchPlaces
from tuner.search.searcher import build_searcher
from tuner.spec import parse_spec


def searcher_for(tmp_path, mode: str = "max"):
    spec = parse_spec({"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
                       "metric": "val_acc" if mode == "max" else "val_loss", "mode": mode,
                       "space": {"lr": {"loguniform": [0.001, 1.0]}}}, source="s.yaml")
    places = SearchPlaces(str(tmp_path / "runs"), "sqlite:///unused.db", None, tmp_path / "state")
    return build_searcher(spec, places, study_name="s")


def test_a_trial_the_study_finished_after_the_snapshot_is_not_reported_again(tmp_path):
    """A driver killed after Optuna heard that a trial ended, but before Ray's next experiment
    snapshot, is resumed with that trial still to run: the restored searcher must take the study's
    word for it (Optuna refuses reports for a finished trial; Ray would end the whole search)."""
    live = searcher_for(tmp_path)
    live.suggest("done")
    live.suggest("running")
    live.on_trial_result("done", {"val_acc": 0.2, "training_iteration": 1})
    live.save(str(tmp_path / "snapshot.pkl"))  # Ray's snapshot: both trials still running
    live.on_trial_complete("done", {"val_acc": 0.3, "training_iteration": 2, "status": "completed"})
    # ... and the driver dies here.

    restored = searcher_for(tmp_path)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    # Ray runs the finished trial's last epoch again, then ends it: neither reaches Optuna.
    restored.on_trial_result("done", {"val_acc": 0.31, "training_iteration": 2})
    restored.on_trial_complete("done", {"val_acc": 0.31, "training_iteration": 2, "status": "completed"})
    # The trial the study still has open goes on as before.
    restored.on_trial_result("running", {"val_acc": 0.1, "training_iteration": 1})
    restored.on_trial_complete("running", {"val_acc": 0.15, "training_iteration": 2, "status": "completed"})

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'state' / 'optuna.db'}")
    done, running = sorted(study.trials, key=lambda t: t.user_attrs["ray_trial_id"])
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == 0.3
    assert done.intermediate_values == {1: 0.2}
    assert running.state == optuna.trial.TrialState.COMPLETE and running.value == 0.15
    assert running.intermediate_values == {1: 0.1}


@pytest.mark.parametrize("mode, curve, best", [("max", [0.3, 0.5, 0.4], 0.5), ("min", [0.9, 0.6, 0.7], 0.6)])
def test_a_complete_trial_is_worth_its_best_epoch_not_its_last(tmp_path, mode, curve, best):
    searcher = searcher_for(tmp_path, mode)
    metric = searcher.metric
    searcher.suggest("t")
    for epoch, value in enumerate(curve, start=1):
        searcher.on_trial_result("t", {metric: value, "training_iteration": epoch})
    searcher.on_trial_complete("t", {metric: curve[-1], "training_iteration": len(curve),
                                     "status": "completed"})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'state' / 'optuna.db'}")
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == best
    assert trial.intermediate_values == dict(enumerate(curve, start=1))
