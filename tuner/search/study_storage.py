"""Where a search's Optuna study lives, and how it is opened.

The embedded default is Optuna's journal: an append-only file beside the search's state
(``runs/<search>/tuner_state/optuna.journal``). Each write of the study appends one line, so one
suggestion (a trial asked, a dozen parameters set) costs ~7 ms, against ~40 ms on SQLite, where every
parameter is its own SQLAlchemy session and commit. Ray Tune's one event loop waits on every
suggestion, and the trials' reports wait on the loop: on 400 trials of 2 s, 8 at once, SQLite put
the search at 1.37x its theoretical wall and the journal at 1.23x (``bench/scale.py``). Other
processes (``tuner status``, the report) read the file while the driver writes it (Optuna locks it).

A team shares a database instead, ``storage:`` in the spec (PostgreSQL), opened through
``EnvURLStorage`` so that no expanded secret is ever pickled. A search begun before the journal keeps
its ``optuna.db``: its saved searcher opens that file, and so does everything here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tuner.places import SearchPlaces
from tuner.redact import expand_env
from tuner.spec.model import SearchSpec

JOURNAL_FILE = "optuna.journal"
SQLITE_FILE = "optuna.db"  # the default of searches begun before the journal


class EnvURLStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage opened from a URL that may name ``${VAR}`` (``tuner.redact.expand_env``).

    A pickle of it (Ray saves the searcher with its study and storage, and restores it on ``tuner
    resume``) holds the URL as written and no connection; unpickling expands the variables again,
    then, so an unset one is a ``UserError`` that names it. The expanded URL lives in memory only.
    """

    def __init__(self, written_url: str, *, what: str = "storage", **kwargs):
        self.written_url = written_url
        self.what = what
        super().__init__(expand_env(written_url, what=what), **kwargs)

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # the engine and sessions stay behind
        state["url"] = None  # filled in again from written_url by __setstate__
        return state

    def __setstate__(self, state: dict) -> None:
        url = self._fill_storage_url_template(expand_env(state["written_url"], what=state["what"]))
        super().__setstate__({**state, "url": url})


def default_study_file(places: SearchPlaces) -> Path:
    """The embedded study's file: the journal, or the SQLite file of a search begun before it."""
    sqlite, journal = places.state_dir / SQLITE_FILE, places.state_dir / JOURNAL_FILE
    return sqlite if sqlite.exists() and not journal.exists() else journal


def study_location(spec: SearchSpec, places: SearchPlaces) -> str:
    """Where the study is, with ``${VAR}`` expanded (an unset one is a UserError naming it): to say
    or to check, never to keep. A file path for the embedded default, else the spec's URL."""
    if spec.storage:
        return expand_env(spec.storage, what=_storage_what(spec))
    return str(default_study_file(places).resolve())


def study_storage(spec: SearchSpec, places: SearchPlaces) -> optuna.storages.BaseStorage:
    """The study's storage, safe to pickle (the searcher that holds it is saved by Ray): a spec's URL
    is kept as written (``EnvURLStorage``); the default journal's file is created if missing."""
    if spec.storage:
        return EnvURLStorage(spec.storage, what=_storage_what(spec))
    places.state_dir.mkdir(parents=True, exist_ok=True)
    path = default_study_file(places).resolve()
    if path.name == SQLITE_FILE:
        return optuna.storages.RDBStorage(f"sqlite:///{path}")
    return JournalStorage(JournalFileBackend(str(path)))


def has_default_study_file(spec: SearchSpec, places: SearchPlaces) -> bool:
    """Whether the study's storage may hold anything: a spec's database always may; the embedded
    file only once a search has made it."""
    return bool(spec.storage) or default_study_file(places).exists()


def load_search_study(spec: SearchSpec, places: SearchPlaces,
                      name: Optional[str] = None) -> Optional[optuna.Study]:
    """The search's study, to read or to tell, or None when there is none yet (readers never create
    the embedded file)."""
    if not has_default_study_file(spec, places):
        return None
    try:
        return optuna.load_study(study_name=name or spec.name, storage=study_storage(spec, places))
    except KeyError:  # Optuna's word for "no such study"
        return None


def _storage_what(spec: SearchSpec) -> str:
    return f"{spec.source}: storage"

