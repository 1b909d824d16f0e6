"""Where a search's study lives: the journal by default, the SQLite file of an older search kept."""

from __future__ import annotations

import optuna
from optuna.storages import JournalStorage, RDBStorage

from tuner.places import SearchPlaces
from tuner.search.searcher import build_searcher
from tuner.search.study_storage import load_search_study, study_storage
from tuner.spec import parse_spec


def spec_and_places(tmp_path):
    spec = parse_spec({"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
                       "space": {"lr": {"loguniform": [0.001, 1.0]}}}, source="s.yaml")
    return spec, SearchPlaces(str(tmp_path / "runs"), "sqlite:///unused.db", None, tmp_path / "state")


def test_the_default_study_is_a_journal_that_another_process_reads_while_the_search_writes(tmp_path):
    spec, places = spec_and_places(tmp_path)
    searcher = build_searcher(spec, places, study_name="s")
    searcher.suggest("a")
    searcher.on_trial_result("a", {"val_acc": 0.25, "training_iteration": 1})

    assert sorted(p.name for p in places.state_dir.iterdir()) == ["optuna.journal"]
    assert isinstance(study_storage(spec, places), JournalStorage)
    (live,) = load_search_study(spec, places).trials  # a storage of its own, as `tuner status` opens it
    assert live.state == optuna.trial.TrialState.RUNNING and live.intermediate_values == {1: 0.25}
    assert live.user_attrs["ray_trial_id"] == "a" and 0.001 <= live.params["lr"] <= 1.0

    searcher.on_trial_complete("a", {"val_acc": 0.3, "training_iteration": 2, "status": "completed"})
    (done,) = load_search_study(spec, places).trials
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == 0.3


def test_a_search_begun_on_sqlite_keeps_its_study_there(tmp_path):
    spec, places = spec_and_places(tmp_path)
    places.state_dir.mkdir(parents=True)
    old = optuna.create_study(study_name="s", storage=f"sqlite:///{places.state_dir / 'optuna.db'}",
                              direction="maximize")
    old.tell(old.ask({"lr": optuna.distributions.FloatDistribution(0.001, 1.0, log=True)}), 0.2)

    assert isinstance(study_storage(spec, places), RDBStorage)
    searcher = build_searcher(spec, places, study_name="s", warm_start=False)  # `tuner resume --more`
    searcher.suggest("b")
    study = load_search_study(spec, places)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    assert not (places.state_dir / "optuna.journal").exists()


def test_reading_a_search_without_a_study_creates_nothing(tmp_path):
    spec, places = spec_and_places(tmp_path)
    assert load_search_study(spec, places) is None
    assert not places.state_dir.exists()
    build_searcher(spec, places, study_name="other")  # the file exists now, with another study
    assert load_search_study(spec, places) is None
