"""The driver's seal on a search's Ray state (``tuner/search/seal.py``), on plain folders: what
``tuner resume`` accepts and what it refuses before Ray unpickles anything. The same check inside a
real search and resume: test_search_in_ray.py."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tuner.errors import UserError
from tuner.search import seal


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "state.key"
    monkeypatch.setenv(seal.KEY_ENV, str(path))
    return path


def saved_search(folder, files: dict[str, bytes]):
    """A search folder as a driver leaves it: tuner.pkl signed at start, the rest at a save."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / seal.TUNER_FILE).write_bytes(b"tuner state")
    seal.seal_tuner_file(str(folder))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return seal.seal_folder(str(folder), seal.state_key(create=True), {})


def test_the_key_is_made_once_for_its_owner_only(key_file):
    key = seal.state_key(create=True)
    assert len(key) == seal.KEY_BYTES
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert seal.state_key(create=True) == key  # made once, then read


def test_a_key_others_can_read_is_refused(key_file):
    seal.state_key(create=True)
    key_file.chmod(0o644)
    with pytest.raises(UserError, match="only its owner can read"):
        seal.state_key(create=False)


def test_a_sealed_search_verifies(tmp_path, key_file):
    folder = tmp_path / "search"
    sealed = saved_search(folder, {"experiment_state-1.json": b"{}", "searcher-state-1.pkl": b"x"})
    assert set(sealed) == {"experiment_state-1.json", "searcher-state-1.pkl", seal.TUNER_FILE}
    (folder / "notes.txt").write_text("not Ray state: Ray never reads it back")
    (folder / "trial_1").mkdir()
    (folder / "trial_1" / "params.pkl").write_bytes(b"a worker's: not read on restore")
    seal.verify_search_state(str(folder), "s")


@pytest.mark.parametrize("tamper", ["changed", "planted", "renamed", "tuner.pkl"])
def test_state_the_driver_did_not_write_is_refused_by_name(tmp_path, key_file, tamper):
    folder = tmp_path / "search"
    saved_search(folder, {"experiment_state-1.json": b"{}", "searcher-state-1.pkl": b"x"})
    if tamper == "changed":
        (folder / "searcher-state-1.pkl").write_bytes(b"y")
        culprit = "searcher-state-1.pkl"
    elif tamper == "planted":
        (folder / "searcher-state-2.pkl").write_bytes(b"x")  # same bytes, a name never signed
        culprit = "searcher-state-2.pkl"
    elif tamper == "renamed":
        os.replace(folder / "searcher-state-1.pkl", folder / "search_gen_state-1.pkl")
        culprit = "search_gen_state-1.pkl"
    else:
        (folder / seal.TUNER_FILE).write_bytes(b"another tuner")
        culprit = seal.TUNER_FILE
    with pytest.raises(UserError, match=f"{culprit}: not signed .* Ray would unpickle it.*--trust-storage"):
        seal.verify_search_state(str(folder), "s")


def test_a_forged_seal_is_refused(tmp_path, key_file):
    folder = tmp_path / "search"
    saved_search(folder, {"searcher-state-1.pkl": b"x"})
    (folder / "searcher-state-1.pkl").write_bytes(b"evil")
    document = json.loads((folder / seal.STATE_SEAL).read_text())
    document["files"]["searcher-state-1.pkl"] = seal.mac(b"k" * 32, "searcher-state-1.pkl", b"evil")
    (folder / seal.STATE_SEAL).write_text(json.dumps(document))
    with pytest.raises(UserError, match="signature does not match"):
        seal.verify_search_state(str(folder), "s")


def test_another_machines_key_or_no_key_is_refused(tmp_path, key_file, monkeypatch):
    folder = tmp_path / "search"
    saved_search(folder, {"searcher-state-1.pkl": b"x"})
    monkeypatch.setenv(seal.KEY_ENV, str(tmp_path / "other.key"))
    with pytest.raises(UserError, match="no search-state key"):
        seal.verify_search_state(str(folder), "s")
    seal.state_key(create=True)
    with pytest.raises(UserError, match="signature does not match"):
        seal.verify_search_state(str(folder), "s")


def test_a_search_without_seals_is_refused(tmp_path, key_file):
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"an older tuner's search")
    seal.state_key(create=True)
    with pytest.raises(UserError, match="is missing, so Ray's state there is unsigned"):
        seal.verify_search_state(str(folder), "s")


def test_an_upload_cut_short_between_two_saves_still_verifies(tmp_path, key_file):
    """The seal also accepts each file's previous version: Ray's upload of a save can stop midway."""
    folder = tmp_path / "search"
    first = saved_search(folder, {"searcher-state-1.pkl": b"save 1", "experiment_state-1.json": b"[1]"})
    key = seal.state_key(create=True)
    (folder / "searcher-state-1.pkl").write_bytes(b"save 2")
    (folder / "experiment_state-1.json").write_bytes(b"[2]")
    seal.seal_folder(str(folder), key, first)
    (folder / "experiment_state-1.json").write_bytes(b"[1]")  # the older file, never replaced
    seal.verify_search_state(str(folder), "s")
    (folder / "experiment_state-1.json").write_bytes(b"[0]")  # two saves back: not accepted
    with pytest.raises(UserError, match="experiment_state-1.json: not signed"):
        seal.verify_search_state(str(folder), "s")


def test_state_files_cut_short_by_a_killed_copy_are_named_not_called_forged(tmp_path, key_file):
    """What a driver SIGKILLed while Ray copies a save into the storage leaves: the files it had
    opened, empty (seen in a real multi-node run). The refusal says what happened."""
    folder = tmp_path / "search"
    saved_search(folder, {"experiment_state-1.json": b"[1]", "searcher-state-1.pkl": b"x",
                          "search_gen_state-1.json": b"{}"})
    (folder / ".validate_storage_marker").write_bytes(b"")  # Ray's own empty marker: not state
    for name in ("searcher-state-1.pkl", "search_gen_state-1.json", seal.STATE_SEAL):
        (folder / name).write_bytes(b"")
    with pytest.raises(UserError) as refused:
        seal.verify_search_state(str(folder), "s")
    message = str(refused.value)
    assert f"search_gen_state-1.json, searcher-state-1.pkl, {seal.STATE_SEAL} are empty" in message
    assert "stopped while it copied the search's state" in message and "not signed" not in message
