"""What a trial's MLflow run records about where it came from, and where its files are.

- ``search_lineage_tags``: package versions and the git commits the search ran from.
- ``dataset_fingerprint``: a hash of the training and validation file lists with their sizes, so two
  runs on "the same folder" that held different images are told apart.
- ``checkpoint_uri`` / ``stage_artifacts``: a Ray checkpoint (local folder or s3://, gs://) as a URI
  for the run's tag, and its small ``artifacts/`` files copied to a local folder for MLflow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

import pyarrow.fs

ARTIFACTS_DIR = "artifacts"  # the trainable's evaluation files, inside each checkpoint directory
MAX_ARTIFACT_BYTES = 50 * 2**20  # a file above 50 MiB in artifacts/ is not copied (it is no figure)

VERSIONS_TAG = "tuner.versions"
COMMIT_TAG = "mlflow.source.git.commit"
CODE_COMMIT_TAG = "tuner.code_commit"  # tuner's own checkout, when it runs from one
FINGERPRINT_TAG = "tuner.dataset_fingerprint"
DATASET_TAG = "tuner.dataset_files"


def package_versions() -> str:
    """Versions of what a trial's result depends on, read from the installed packages' metadata
    (no import: a light command may record lineage too)."""
    names = ("tuner", "torch", "torchvision", "ray", "optuna", "mlflow")
    return " ".join(f"{name}={_version(name)}" for name in names)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def git_commit(directory: Path) -> Optional[str]:
    """HEAD of the repository holding ``directory``, or None (no git, not a repository)."""
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def search_lineage_tags(start_dir: Path) -> dict[str, str]:
    """Tags of a search and each of its trials: package versions; the commit of the repository the
    search was started in (the user's project: spec, data scripts), as MLflow's own
    ``mlflow.source.git.commit``; and the commit of tuner's own checkout when it runs from one."""
    tags = {VERSIONS_TAG: package_versions()}
    commit = git_commit(start_dir)
    if commit:
        tags[COMMIT_TAG] = commit
    code = git_commit(Path(__file__).resolve().parent)
    if code:
        tags[CODE_COMMIT_TAG] = code
    return tags


def dataset_fingerprint(folders: dict[str, str]) -> dict[str, str]:
    """Tags naming the data: sha256 over every (split, relative path, size), sorted.

    ``folders`` maps a split name to its folder ({"train": …, "val": …}). Remote folders (``s3://``)
    and missing ones are named, not hashed. Cost: one stat per file (~1 s per 100k files).
    """
    digest = hashlib.sha256()
    described = []
    for split, folder in sorted(folders.items()):
        if not folder or "://" in folder or not Path(folder).is_dir():
            described.append(f"{split}: {folder or '-'} (not hashed)")
            digest.update(f"{split}\t{folder}\n".encode())
            continue
        files, total = _listing(Path(folder))
        for relative, size in files:
            digest.update(f"{split}/{relative}\t{size}\n".encode())
        described.append(f"{split}: {len(files)} files, {total / 2**20:.1f} MiB")
    return {FINGERPRINT_TAG: digest.hexdigest()[:16], DATASET_TAG: "; ".join(described)}


def _listing(root: Path) -> tuple[list[tuple[str, int]], int]:
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in names:
            if name.startswith("."):
                continue
            path = Path(directory) / name
            try:
                size = path.stat().st_size
            except OSError:  # vanished while we looked: not part of the data
                continue
            files.append((path.relative_to(root).as_posix(), size))
    files.sort()
    return files, sum(size for _, size in files)


def checkpoint_uri(checkpoint) -> Optional[str]:
    """A Ray ``Checkpoint`` as a string: a local path, or ``s3://bucket/key`` on remote storage."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return str(checkpoint.path)
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


def open_location(uri: str):
    """(pyarrow filesystem, path) for a local path or a remote URI written by ``checkpoint_uri``."""
    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())


def stage_artifacts(checkpoint_location: str, target: Path) -> list[str]:
    """Copies ``<checkpoint>/artifacts/*`` to ``target`` (files only); returns their names."""
    fs, base = open_location(checkpoint_location)
    selector = pyarrow.fs.FileSelector(f"{base}/{ARTIFACTS_DIR}", allow_not_found=True)
    infos = [i for i in fs.get_file_info(selector) if i.type == pyarrow.fs.FileType.File]
    copied = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.size is not None and info.size > MAX_ARTIFACT_BYTES:
            continue
        target.mkdir(parents=True, exist_ok=True)
        name = info.path.rsplit("/", 1)[-1]
        if isinstance(fs, pyarrow.fs.LocalFileSystem):
            shutil.copyfile(info.path, target / name)
        else:
            with fs.open_input_stream(info.path) as source, open(target / name, "wb") as sink:
                shutil.copyfileobj(source, sink)
        copied.append(name)
    return copied
