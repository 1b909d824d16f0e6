"""The driver's seal on a search's Ray state: ``tuner resume`` lets Ray unpickle only what a driver
holding this machine's key wrote.

Ray restores a search from the ``.json`` and ``.pkl`` files at the top of its folder in the storage:
``tuner.pkl``, ``experiment_state-*.json`` (cloudpickled trial state inside),
``search_gen_state-*.pkl``, ``searcher-state-*.pkl``. Whoever can write that folder can plant a
pickle that runs code on the driver at resume; on a cluster that folder is in S3, and the workers'
role writes there (checkpoints). So the driver signs each of those files with HMAC-SHA256 under a
key only it holds (``~/.tuner/state.key``, or ``$TUNER_STATE_KEY``; mode 600, never in the storage,
never sent to a worker), and ``tuner resume`` checks every one before Ray opens any.

When the driver signs: Ray writes its state into a local staging folder, then uploads that folder
(``TuneController.save_to_dir``, then the syncer). ``SealedSearchGenerator`` is the search
algorithm, whose ``save_to_dir`` Ray calls after writing the experiment state: it writes Ray's search
state, then signs the staging folder, before the upload, so the seal travels with the files it
covers. The callbacks' turn comes after it; none of ours keeps state, so they write no file (one that
did would go unsigned and be refused). ``tuner.pkl`` is written once, straight into the storage, when
the Tuner is made: ``seal_tuner_file`` signs it then, before any trial runs.

A seal lists each file's current MAC and its previous one: an upload cut short by a crash can leave
old and new files side by side, and both are the driver's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Optional

import pyarrow.fs
from ray.tune.search import SearchGenerator

from tuner.errors import UserError
from tuner.redact import redact

KEY_ENV = "TUNER_STATE_KEY"
STATE_SEAL = "tuner-seal.json"  # Ray's experiment and search state, signed at every save
TUNER_SEAL = "tuner-seal-tuner-pkl.json"  # tuner.pkl, signed once when the Tuner is made
TUNER_FILE = "tuner.pkl"
KEY_BYTES = 32


def key_path() -> Path:
    return Path(os.environ.get(KEY_ENV) or Path.home() / ".tuner" / "state.key").expanduser()


def state_key(*, create: bool) -> Optional[bytes]:
    """The driver's key; made (mode 600) when ``create`` and there is none yet. None when it is
    missing and not to be made. A key others can read or write is refused: it would sign nothing."""
    path = key_path()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass  # another driver made it first: read theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
        raise UserError(f"{path}: the search-state key must be a regular file only its owner can read "
                        f"(chmod 600 {path})")
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise UserError(f"{path}: the search-state key is {len(key)} bytes, needs {KEY_BYTES}; "
                        f"remove it and a new one is made (searches signed with it can no longer resume)")
    return key


def mac(key: bytes, name: str, data: bytes) -> str:
    """The file's name is signed with its bytes: a signed file cannot stand in for another one."""
    return hmac.new(key, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _seal_document(key: bytes, files: dict[str, str], previous: dict[str, str]) -> bytes:
    body = {"files": files, "previous": previous}
    canonical = json.dumps(body, sort_keys=True).encode()
    return json.dumps({**body, "mac": mac(key, "seal", canonical)}, sort_keys=True, indent=1).encode()


def _read_seal(key: bytes, raw: bytes, where: str) -> dict[str, set[str]]:
    """name -> the MACs the seal accepts for it; a seal whose own MAC fails is refused."""
    try:
        document = json.loads(raw)
        body = {"files": dict(document["files"]), "previous": dict(document["previous"])}
        signature = str(document["mac"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: not a seal this driver wrote; refusing to resume") from None
    canonical = json.dumps(body, sort_keys=True).encode()
    if not hmac.compare_digest(signature, mac(key, "seal", canonical)):
        raise UserError(f"{where}: its signature does not match this machine's key ({key_path()}); "
                        "refusing to resume")
    accepted: dict[str, set[str]] = {}
    for part in ("files", "previous"):
        for name, value in body[part].items():
            accepted.setdefault(name, set()).add(str(value))
    return accepted


def is_ray_state(name: str) -> bool:
    """What Ray reads back on restore: every .json and .pkl at the top of the experiment folder
    (ExperimentCheckpointManager.sync_down_experiment_state), minus our seals."""
    return name.endswith((".json", ".pkl")) and name not in (STATE_SEAL, TUNER_SEAL)


def seal_folder(folder: str, key: bytes, previous: dict[str, str]) -> dict[str, str]:
    """Signs Ray's state files at the top of a local ``folder``; returns their MACs."""
    files = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and is_ray_state(entry.name):
            files[entry.name] = mac(key, entry.name, Path(entry.path).read_bytes())
    _write_atomic(Path(folder, STATE_SEAL), _seal_document(key, files, previous))
    return files


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(partial, path)


class SealedSearchGenerator(SearchGenerator):
    """Ray's SearchGenerator that signs the driver's staging folder each time Ray saves it.
    It holds no key (it is pickled into tuner.pkl): the key is read from the driver's disk."""

    def save_to_dir(self, dirpath: str, session_str: str):
        super().save_to_dir(dirpath, session_str)
        key = state_key(create=True)
        self._sealed = seal_folder(dirpath, key, getattr(self, "_sealed", {}))

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_sealed", None)
        return state


def _filesystem(folder: str):
    if "://" in folder:
        return pyarrow.fs.FileSystem.from_uri(folder)
    return pyarrow.fs.LocalFileSystem(), str(Path(folder).resolve())


def seal_tuner_file(experiment_dir: str) -> None:
    """Signs tuner.pkl, which Ray wrote into the storage when the Tuner was made."""
    key = state_key(create=True)
    filesystem, root = _filesystem(experiment_dir)
    with filesystem.open_input_stream(f"{root}/{TUNER_FILE}") as f:
        data = f.read()
    with filesystem.open_output_stream(f"{root}/{TUNER_SEAL}") as f:
        f.write(_seal_document(key, {TUNER_FILE: mac(key, TUNER_FILE, data)}, {}))


def verify_search_state(experiment_dir: str, search: str) -> None:
    """Refuses, naming the file, any .json/.pkl at the top of the search's folder that this
    machine's driver key did not sign: Ray would unpickle it. Run before ``Tuner.restore``."""
    where = redact(experiment_dir)
    trust = f"`tuner resume {search} --trust-storage` skips this check: only if nothing but your drivers can write {where}"
    key = state_key(create=False)
    if key is None:
        raise UserError(f"search {search!r}: no search-state key at {key_path()} to check {where} with "
                        f"(resume on the machine that ran the search, or set ${KEY_ENV}); {trust}")
    filesystem, root = _filesystem(experiment_dir)
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
    sizes = {Path(i.path).name: i.size for i in infos if i.type == pyarrow.fs.FileType.File}
    # Ray copies a save into the storage file by file, over the previous one: a driver killed
    # during that copy leaves files opened and never written. No Ray state or seal is ever empty.
    empty = sorted(name for name, size in sizes.items()
                   if size == 0 and (is_ray_state(name) or name in (STATE_SEAL, TUNER_SEAL)))
    if empty:
        raise UserError(
            f"{where}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: the driver was "
            f"stopped while it copied the search's state there, and Ray cannot restore a search from "
            f"files cut short. The trials' checkpoints and MLflow runs are intact (docs/cluster.md, "
            f"fault tolerance)")

    def read(name: str) -> bytes:
        with filesystem.open_input_stream(f"{root}/{name}") as f:
            return f.read()

    accepted: dict[str, set[str]] = {}
    for seal in (STATE_SEAL, TUNER_SEAL):
        if seal not in sizes:
            raise UserError(f"{where}: {seal} is missing, so Ray's state there is unsigned (a search saved "
                            f"before tuner signed its state, or files put there by hand); {trust}")
        for name, macs in _read_seal(key, read(seal), f"{where}/{seal}").items():
            accepted.setdefault(name, set()).update(macs)
    for name in sorted(sizes):
        if is_ray_state(name) and mac(key, name, read(name)) not in accepted.get(name, ()):
            raise UserError(f"{where}/{name}: not signed by this machine's search-state key "
                            f"({key_path()}); refusing to resume, because Ray would unpickle it; {trust}")
