"""A search name is never reused, whatever the storage: `tuner search` refuses a name whose folder
already exists in the storage (a local folder or any URI pyarrow opens: file://, s3://, gs://) or
whose Optuna study already exists in the spec's storage, before anything is written or run.
`tuner resume` and `--more` continue an existing search and are not refused.

The driver is replaced by a stand-in (no Ray, no trials): what is checked here is what happens
before it runs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pyarrow.fs
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import tuner.search.command as command
from tests.conftest import fresh_postgres_database
from tuner.errors import UserError
from tuner.places import STATE_DIR_ENV, STORAGE_ENV, search_places
from tuner.search.driver import ensure_new_search
from tuner.spec import parse_spec


class FakeDriver:
    """Stands in for Ray: records each run and writes the search's folder where Ray would."""

    def __init__(self):
        self.runs = []

    def __call__(self, spec, places, tracking, *, address=None, experiment=None, **_):
        self.runs.append((spec.name, spec.budget.num_samples, experiment))
        search_dir = places.search_dir(spec.name)
        filesystem, path = pyarrow.fs.FileSystem.from_uri(search_dir) if "://" in search_dir \
            else (pyarrow.fs.LocalFileSystem(), search_dir)
        filesystem.create_dir(f"{path}/{experiment[1] if experiment else spec.name}", recursive=True)
        with filesystem.open_output_stream(f"{path}/experiment_state.json") as stream:
            stream.write(spec.name.encode())
        return []


@pytest.fixture
def driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    fake = FakeDriver()
    monkeypatch.setattr(command, "run_search", fake)
    monkeypatch.setattr(command, "preflight_search", lambda *a, **kw: None)
    monkeypatch.setattr(command, "print_summary", lambda *a, **kw: None)
    (tmp_path / "data").mkdir()
    return fake


def write_spec(tmp_path: Path, name: str = "s", **extra) -> Path:
    spec = {"name": name, "data": {"train": str(tmp_path / "data"), "val": str(tmp_path / "data")},
            "space": {"lr": {"loguniform": [0.001, 1.0]}}, "budget": {"num_samples": 2}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_name_already_in_file_uri_storage_is_refused_before_anything_runs(tmp_path, driver):
    storage = f"file://{tmp_path / 'store'}"
    spec_file = write_spec(tmp_path)
    command.start_search(spec_file, overrides={}, storage=storage)
    assert len(driver.runs) == 1
    definition = (tmp_path / "state" / "s" / "search.json").read_bytes()
    results = sorted(p.name for p in (tmp_path / "store" / "s").iterdir())

    with pytest.raises(UserError) as refused:
        command.start_search(spec_file, overrides={}, storage=storage)
    message = str(refused.value)
    assert "'s' already exists" in message and storage in message
    assert "tuner resume s" in message and "--name" in message
    assert len(driver.runs) == 1  # nothing ran again
    assert (tmp_path / "state" / "s" / "search.json").read_bytes() == definition  # nothing rewritten
    assert sorted(p.name for p in (tmp_path / "store" / "s").iterdir()) == results

    command.start_search(spec_file, overrides={}, name="s2", storage=storage)  # another name runs
    assert [run[0] for run in driver.runs] == ["s", "s2"]


def test_a_name_already_in_local_storage_is_refused(tmp_path, driver):
    spec_file = write_spec(tmp_path)
    command.start_search(spec_file, overrides={}, storage=str(tmp_path / "runs"))
    with pytest.raises(UserError, match="'s' already exists.*tuner resume s"):
        command.start_search(spec_file, overrides={}, storage=str(tmp_path / "runs"))
    assert len(driver.runs) == 1


@pytest.fixture(params=["sqlite", "postgresql"])
def study_storage(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared-optuna.db'}"
    else:
        with fresh_postgres_database() as dsn:
            yield dsn


def test_a_study_already_in_the_specs_optuna_storage_is_refused(tmp_path, driver, study_storage):
    optuna.create_study(study_name="s", storage=study_storage)
    optuna.create_study(study_name="other", storage=study_storage)
    spec_file = write_spec(tmp_path, storage=study_storage)
    # A fresh folder in the storage, but the study is shared: running would merge into it.
    with pytest.raises(UserError) as refused:
        command.start_search(spec_file, overrides={}, storage=f"file://{tmp_path / 'store'}")
    message = str(refused.value)
    assert "Optuna study named 's' already exists" in message and study_storage in message
    assert "tuner resume s" in message and "--name" in message
    assert driver.runs == [] and not (tmp_path / "state" / "s").exists()

    command.start_search(spec_file, overrides={}, name="fresh", storage=f"file://{tmp_path / 'store'}")
    assert [run[0] for run in driver.runs] == ["fresh"]


@pytest.mark.parametrize("default_file", ["optuna.journal", "optuna.db"])  # the db: searches before the journal
def test_a_study_left_in_the_default_file_of_a_remote_storage_is_refused(tmp_path, driver, default_file):
    # Remote storage keeps the default study on the driver's machine: a study there is the old search's.
    (tmp_path / "state" / "s").mkdir(parents=True)
    path = tmp_path / "state" / "s" / default_file
    storage = f"sqlite:///{path}" if path.suffix == ".db" else JournalStorage(JournalFileBackend(str(path)))
    optuna.create_study(study_name="s", storage=storage)
    with pytest.raises(UserError, match="Optuna study named 's' already exists"):
        command.start_search(write_spec(tmp_path), overrides={}, storage=f"file://{tmp_path / 'store'}")
    assert driver.runs == []


def test_resume_and_more_continue_an_existing_search(tmp_path, driver, monkeypatch):
    storage = f"file://{tmp_path / 'store'}"
    command.start_search(write_spec(tmp_path), overrides={}, storage=storage)
    resumed = []
    monkeypatch.setattr(command, "resume_search", lambda spec, places, **kw: resumed.append(spec.name) or [])

    command.resume("s", storage=storage)
    assert resumed == ["s"]
    command.resume("s", more=3, storage=storage)
    assert driver.runs[-1] == ("s", 3, (f"{storage}/s", "more-1"))


def test_an_unreadable_storage_uri_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec({"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
                       "space": {"lr": {"loguniform": [0.001, 1.0]}}}, source="s.yaml")
    places = search_places("s", tracking_uri="sqlite:///unused.db", storage="nosuchfs://bucket/prefix")
    with pytest.raises(UserError, match="cannot check whether search 's' already exists"):
        ensure_new_search(places, spec)
