"""Our OptunaSearch, driven the way Ray drives it: what the study learns about each trial."""

from __future__ import annotations

import optuna
import pytest
import ray
from ray.tune.search import ConcurrencyLimiter

from tuner.errors import UserError
from tuner.places import SearchPlaces
from tuner.search.searcher import build_searcher
from tuner.search.study_storage import load_search_study
from tuner.spec import parse_spec


def spec_and_places(tmp_path, mode: str = "max"):
    spec = parse_spec({"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
                       "metric": "val_acc" if mode == "max" else "val_loss", "mode": mode,
                       "space": {"lr": {"loguniform": [0.001, 1.0]}}}, source="s.yaml")
    return spec, SearchPlaces(str(tmp_path / "runs"), "sqlite:///unused.db", None, tmp_path / "state")


def searcher_for(tmp_path, mode: str = "max"):
    return build_searcher(*spec_and_places(tmp_path, mode), study_name="s")


def stored_study(tmp_path) -> optuna.Study:
    """The study as another process reads it from the search's storage."""
    return load_search_study(*spec_and_places(tmp_path))


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

    study = stored_study(tmp_path)
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
    study = stored_study(tmp_path)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == best
    assert trial.intermediate_values == dict(enumerate(curve, start=1))


def test_a_saved_searcher_holds_the_storage_url_as_written_and_expands_it_on_restore(tmp_path, monkeypatch):
    """``storage:`` naming ``${VAR}``: Ray's two pickles of the searcher (searcher-state-*.pkl by
    save_to_dir, tuner.pkl by cloudpickle) hold the reference, not its value; a restore opens the
    study again with the value the variable has then, and an unset one is an error naming it."""
    secret = "not-in-any-file-7f3a"
    monkeypatch.setenv("TUNER_TEST_DB", secret)
    spec = parse_spec({"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
                       "metric": "val_acc", "mode": "max", "space": {"lr": {"loguniform": [0.001, 1.0]}},
                       "storage": f"sqlite:///{tmp_path}/" + "${TUNER_TEST_DB}.db"}, source="s.yaml")
    places = SearchPlaces(str(tmp_path / "runs"), "sqlite:///unused.db", None, tmp_path / "state")
    live = build_searcher(spec, places, study_name="s")
    live.suggest("a")
    live.on_trial_complete("a", {"val_acc": 0.5, "training_iteration": 1, "status": "completed"})
    live.suggest("b")
    saved = tmp_path / "saved"
    saved.mkdir()
    live.save_to_dir(str(saved), "now")
    (saved / "tuner.pkl").write_bytes(ray.cloudpickle.dumps(ConcurrencyLimiter(live, max_concurrent=2)))
    for path in saved.iterdir():
        assert secret.encode() not in path.read_bytes(), path.name
        assert b"${TUNER_TEST_DB}" in path.read_bytes(), path.name

    restored = build_searcher(spec, places, study_name="s", warm_start=False)
    restored.restore(str(saved / "searcher-state-now.pkl"))
    assert [t.state for t in restored._ot_study.trials] == [optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.RUNNING]
    restored.on_trial_complete("b", {"val_acc": 0.7, "training_iteration": 1, "status": "completed"})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / secret}.db")
    assert sorted(t.value for t in study.trials) == [0.5, 0.7]
    assert ray.cloudpickle.loads((saved / "tuner.pkl").read_bytes()).searcher._ot_study.trials

    monkeypatch.delenv("TUNER_TEST_DB")
    later = searcher_for(tmp_path)
    with pytest.raises(UserError, match="s.yaml: storage: environment variable TUNER_TEST_DB is not set"):
        later.restore(str(saved / "searcher-state-now.pkl"))
    with pytest.raises(UserError, match="TUNER_TEST_DB"):
        ray.cloudpickle.loads((saved / "tuner.pkl").read_bytes())
