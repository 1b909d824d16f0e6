"""Every sampler and scheduler inside a real Ray search (our driver, OptunaSearch, the scheduler,
the MLflow callback), fractional GPU shares, and a trial that really raises.

The trainable is ``synthetic.synthetic_trial`` (a known answer, milliseconds per epoch), so the
search path itself is what runs: one Ray session for the module, one small search per case.
"""

from __future__ import annotations

import contextlib
import pathlib
import pickle
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from tests.conftest import fresh_postgres_database
from tests.tuner.search import synthetic
from tuner.errors import UserError
from tuner.places import SearchPlaces
from tuner.search.command import make_tracking
from tuner.search.driver import resume_search, run_search
from tuner.search.samplers import SAMPLERS
from tuner.search.schedulers import SCHEDULERS
from tuner.search.seal import verify_search_state
from tuner.search.searcher import build_searcher
from tuner.search.study_storage import load_search_study
from tuner.spec import parse_spec

pytestmark = pytest.mark.slow

SPACE_FOR_KINDS = {
    "continuous": {"lr": {"loguniform": [0.001, 1.0]}, "momentum": {"uniform": [0.5, 0.99]}},
    "mixed": {"lr": {"loguniform": [0.001, 1.0]}, "optimizer": {"choice": ["sgd", "adam"]}},
    "choices": {"lr": {"choice": [0.005, 0.05, 0.5]}},  # a grid of exactly 3 points
}


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    events = tmp_path_factory.mktemp("events")
    synthetic.start_ray_session(events, num_cpus=8, num_gpus=1)  # 8 CPUs and a GPU, logical
    yield events
    synthetic.stop_ray_session()


def spec_and_places(tmp_path, name: str, **raw):
    spec = parse_spec({
        "name": name, "data": {"train": str(tmp_path), "val": str(tmp_path)},
        "fixed": {"epochs": 3}, "resources": {"cpu": 1, "gpu": 0},
        "budget": {"num_samples": 3, "max_concurrent": 2, "max_failures": 0}, **raw,
    }, source=f"{name}.yaml")
    places = SearchPlaces(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}",
                          tmp_path / "mlruns", tmp_path / "runs" / name / "tuner_state")
    return spec, places


def search(tmp_path, events, name: str, *, hold: int = 0, **raw):
    synthetic.set_hold(events, hold, raw.get("budget", {}).get("num_samples", 3))
    spec, places = spec_and_places(tmp_path, name, **raw)
    results = run_search(spec, places, make_tracking(spec, places, None, tmp_path),
                         trainable=synthetic.synthetic_trial)
    study = load_search_study(spec, places)
    client = MlflowClient(places.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.`tuner.kind` = 'trial'")
    return results, study, {r.data.tags["tuner.trial_id"]: r for r in runs}


def space_for(sampler: str) -> dict:
    kinds = SAMPLERS.get(sampler).kinds
    if "loguniform" not in kinds:
        return SPACE_FOR_KINDS["choices"]
    return SPACE_FOR_KINDS["mixed" if "choice" in kinds else "continuous"]


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_sampler_runs_a_ray_search(ray_session, tmp_path, sampler):
    results, study, runs = search(tmp_path, ray_session, f"s-{sampler}", space=space_for(sampler),
                                  sampler={"name": sampler, "seed": 1}, scheduler={"name": "fifo"})
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(r.error is None for r in results)
    # Optuna holds each trial's best value (these curves rise: the last one; tests/tuner/search/test_searcher.py has the rest).
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(r.metrics["val_acc"] for r in results))
    assert {r.data.tags["tuner.status"] for r in runs.values()} == {"completed"} and len(runs) == 3
    if sampler == "grid":  # exactly the grid, each point once
        assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULERS.names() if SCHEDULERS.get(s).stops_early])
def test_early_stopping_schedulers_prune_the_bad_trials(ray_session, tmp_path, scheduler):
    options = {"grace_period": 1}
    if scheduler == "median":
        options["min_samples_required"] = 1
    if "points_to_end" in SCHEDULERS.get(scheduler).options:
        options["points_to_end"] = False  # these points stand in for any trials; the next test keeps them
    # The good point runs first and alone; the far-off ones are stopped at their first chance.
    results, study, runs = search(
        tmp_path, ray_session, f"p-{scheduler}", fixed={"epochs": 4},
        space={"lr": {"loguniform": [0.0001, 1.0]}},
        points_to_evaluate=[{"lr": 0.05}, {"lr": 0.0001}, {"lr": 0.00011}],
        sampler={"name": "random", "seed": 0}, scheduler={"name": scheduler, **options},
        budget={"num_samples": 3, "max_concurrent": 1, "max_failures": 0},
    )
    by_lr = {round(t.params["lr"], 6): t for t in study.trials}
    assert by_lr[0.05].state == optuna.trial.TrialState.COMPLETE
    assert by_lr[0.0001].state == optuna.trial.TrialState.PRUNED
    assert by_lr[0.00011].state == optuna.trial.TrialState.PRUNED
    pruned = by_lr[0.0001]
    assert pruned.intermediate_values and max(pruned.intermediate_values) < 4  # stopped before the end
    statuses = sorted(r.data.tags["tuner.status"] for r in runs.values())
    assert statuses == ["completed", "early_stopped", "early_stopped"]


def test_asha_lets_the_specs_points_run_to_the_end(ray_session, tmp_path):
    # The same search as above under the default ASHA: the far-off points are the user's recipes.
    results, study, runs = search(
        tmp_path, ray_session, "p-points", fixed={"epochs": 4},
        space={"lr": {"loguniform": [0.0001, 1.0]}},
        points_to_evaluate=[{"lr": 0.05}, {"lr": 0.0001}, {"lr": 0.00011}],
        sampler={"name": "random", "seed": 0}, scheduler={"name": "asha", "grace_period": 1},
        budget={"num_samples": 3, "max_concurrent": 1, "max_failures": 0},
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert sorted(r.metrics["training_iteration"] for r in results) == [4, 4, 4]  # every epoch ran
    assert sorted(r.data.tags["tuner.status"] for r in runs.values()) == ["completed"] * 3


def test_a_trial_that_raises_fails_in_optuna_and_mlflow(ray_session, tmp_path):
    results, study, runs = search(
        tmp_path, ray_session, "crash", space={"lr": {"loguniform": [0.01, 0.1]},
                                               "weight_decay": {"choice": [0.0, 0.9]}},
        points_to_evaluate=[{"lr": 0.05, "weight_decay": 0.0}, {"lr": 0.05, "weight_decay": 0.9}],
        sampler={"name": "random", "seed": 0}, scheduler={"name": "fifo"},
        budget={"num_samples": 2, "max_concurrent": 1, "max_failures": 0},
    )
    by_decay = {t.params["weight_decay"]: t for t in study.trials}
    assert by_decay[0.9].state == optuna.trial.TrialState.FAIL
    assert by_decay[0.0].state == optuna.trial.TrialState.COMPLETE
    errored = [r for r in results if r.error is not None]
    assert len(errored) == 1 and "planted crash" in str(errored[0].error)
    assert sorted(r.data.tags["tuner.status"] for r in runs.values()) == ["completed", "failed"]


@pytest.mark.parametrize("share, expected", [(0.25, 4), (0.5, 2)])
def test_gpu_shares_bound_how_many_trials_run_at_once(ray_session, tmp_path, share, expected):
    # Each trial waits until `expected` run at once (or all have started): at 0.25 four run
    # together and a fifth never joins them; at 0.5 only two can, whatever max_concurrent allows.
    results, study, _ = search(
        tmp_path, ray_session, f"gpu-{int(share * 100)}", hold=expected, space={"lr": {"loguniform": [0.01, 0.1]}},
        sampler={"name": "random", "seed": 0}, scheduler={"name": "fifo"}, fixed={"epochs": 1},
        resources={"cpu": 0, "gpu": share}, budget={"num_samples": expected + 1, "max_concurrent": 8},
    )
    assert all(r.error is None for r in results) and len(results) == expected + 1
    assert synthetic.max_overlap(ray_session) == expected


SECRET_ENV = "TUNER_TEST_STORAGE_SECRET"


@pytest.fixture
def postgres_db():
    """A fresh database on the PostgreSQL at 127.0.0.1 (trust auth: a password given is ignored)."""
    with fresh_postgres_database() as dsn:
        yield dsn


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_storage_variable_is_expanded_where_opened_never_saved(ray_session, tmp_path, monkeypatch,
                                                                 request, backend):
    """``storage: postgresql://user:${VAR}@host/db``: Ray pickles the searcher (its Optuna study and
    storage) into searcher-state-*.pkl and tuner.pkl; those hold the URL as written, and a restore
    expands the variable again (an unset one is an error that names it)."""
    secret = f"dummy-pw-{uuid.uuid4().hex}"
    monkeypatch.setenv(SECRET_ENV, secret)
    reference = "${" + SECRET_ENV + "}"
    if backend == "postgresql":
        storage = request.getfixturevalue("postgres_db").replace("postgres@", f"postgres:{reference}@", 1)
    else:  # the variable names part of the path: the same leak, on any machine
        storage = f"sqlite:///{tmp_path / 'optuna'}-{reference}.db"
    name = f"env-{backend}"
    raw = {"storage": storage, "space": {"lr": {"loguniform": [0.01, 0.1]}},
           "sampler": {"name": "random", "seed": 0}, "scheduler": {"name": "fifo"}}
    results, study, _ = search(tmp_path, ray_session, name, **raw)
    assert all(r.error is None for r in results) and len(study.trials) == 3

    search_dir = tmp_path / "runs" / name
    states = sorted(search_dir.glob("searcher-state-*.pkl"))
    assert states and (search_dir / "tuner.pkl").is_file()
    assert reference.encode() in states[-1].read_bytes()  # the URL as written
    leaked = [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob("*"))
              if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []

    # Ray's own restore, as `tuner resume` does it: tuner.pkl, then the searcher's state.
    spec, places = spec_and_places(tmp_path, name, **raw)
    restored = tune.Tuner.restore(
        str(search_dir), trainable=tune.with_resources(synthetic.synthetic_trial, {"cpu": 1, "gpu": 0}),
        resume_unfinished=True, param_space=spec.base_config())
    assert len(restored.fit()) == 3
    searcher = build_searcher(spec, places, study_name=name, warm_start=False)
    searcher.restore(str(states[-1]))
    assert len(searcher._ot_study.get_trials(deepcopy=False)) == 3  # the study, opened again
    assert searcher.suggest("after-restore")["lr"] > 0

    later = build_searcher(spec, places, study_name=name, warm_start=False)
    monkeypatch.delenv(SECRET_ENV)  # a resume in a shell without the variable
    with pytest.raises(UserError, match=f"environment variable {SECRET_ENV} is not set"):
        later.restore(str(states[-1]))
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


class _Touch:
    """A pickle that, loaded, creates a file: what a worker that can write the storage could plant."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_resume_unpickles_only_state_the_driver_sealed(ray_session, tmp_path):
    """Ray's restore loads the newest search_gen_state-*.json (a pickle) it finds in the search's folder. One
    planted there (a worker's role can write the storage) is refused by name before Ray opens it;
    with --trust-storage Ray really runs it, which is what the seal is for."""
    name = "sealed"
    raw = {"space": {"lr": {"loguniform": [0.01, 0.1]}}, "sampler": {"name": "random", "seed": 0},
           "scheduler": {"name": "fifo"}}
    results, _, _ = search(tmp_path, ray_session, name, **raw)
    assert all(r.error is None for r in results)
    spec, places = spec_and_places(tmp_path, name, **raw)
    search_dir = tmp_path / "runs" / name
    verify_search_state(str(search_dir), name)  # what the driver wrote verifies as it is

    marker = tmp_path / "pwned"
    planted = search_dir / "search_gen_state-9999-12-31_23-59-59.json"  # sorts last: Ray loads it (a pickle)
    planted.write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(UserError, match=f"{planted.name}: not signed .*Ray would unpickle it"):
        resume_search(spec, places, trainable=synthetic.synthetic_trial)
    assert not marker.exists()

    with contextlib.suppress(Exception):  # not a search state: Ray may fail after it has run it
        resume_search(spec, places, trust_storage=True, trainable=synthetic.synthetic_trial)
    assert marker.exists()
