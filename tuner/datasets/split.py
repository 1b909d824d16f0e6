"""Stratified, seeded train/validation split of an ImageFolder tree.

For each class folder of ``src_dir`` the files are sorted, shuffled with a
generator seeded by ``(seed, class name)`` (so a class's split does not
change when other classes are added) and the first
``round(n * val_fraction)`` go to validation, clamped so that every class
with at least 2 images has at least 1 validation and 1 training image. A
class with a single image stays in training only: consumers must map class
folder names to indices explicitly, not by position in a listing.

The plan is written first to ``out_val/.split.json`` (status
``in_progress``), then files are transferred, then the status becomes
``complete``. Re-running with the same arguments is therefore a no-op after
success and resumes after a crash; any other non-empty output is refused.
``out_train == src_dir`` with ``mode="move"`` splits in place (moves the
validation images out of the source tree).
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuner.datasets.safe_files import open_new
from tuner.datasets.stats import list_image_folder

__all__ = ["MANIFEST", "SplitError", "SplitResult", "split_validation"]

MANIFEST = ".split.json"
Mode = Literal["copy", "move", "link"]
_MODES = ("copy", "move", "link")


class SplitError(ValueError):
    """Invalid split arguments or outputs that would be overwritten."""


@dataclass
class SplitResult:
    """Per-class image counts of a split."""

    train: dict[str, int] = field(default_factory=dict)
    val: dict[str, int] = field(default_factory=dict)
    #: Classes with fewer than 2 images: present in train only.
    train_only: list[str] = field(default_factory=list)
    manifest: Path | None = None


def split_validation(
    src_dir: str | os.PathLike[str],
    *,
    val_fraction: float,
    seed: int = 0,
    out_train: str | os.PathLike[str],
    out_val: str | os.PathLike[str],
    mode: Mode = "copy",
) -> SplitResult:
    """Split ``src_dir/<class>/*`` into ``out_train`` and ``out_val`` trees.

    Args:
        src_dir: ImageFolder root to split.
        val_fraction: share of each class sent to validation, in (0, 1).
        seed: integer seed; same inputs and seed give the same split.
        out_train, out_val: output roots (created; must be empty or hold
            this very split).
        mode: ``copy``, ``move``, or ``link`` (hard links; falls back to a
            copy across file systems).

    Raises:
        SplitError: bad fraction/mode/paths, or a non-empty output that does
            not hold the same split.
    """
    src, train, val = (Path(p).resolve() for p in (src_dir, out_train, out_val))
    _check_args(val_fraction, seed, mode)
    in_place = _check_paths(src, train, val, mode)
    params = {
        "src": str(src),
        "val_fraction": float(val_fraction),
        "seed": seed,
        "mode": mode,
        "out_train": str(train),
    }
    manifest_path = val / MANIFEST
    manifest = _read_manifest(manifest_path)
    if manifest is not None and manifest.get("params") == params:
        if manifest.get("status") == "complete":
            return _result(manifest, manifest_path)
        plan = manifest["plan"]  # interrupted run: finish the same plan
    else:
        _require_empty(val, "out_val")
        if not in_place:
            _require_empty(train, "out_train")
        plan = _make_plan(src, float(val_fraction), seed)
        if not plan:
            raise SplitError(f"no class folder with images under {src}")
        manifest = {"params": params, "status": "in_progress", "plan": plan}
        _write_manifest(manifest_path, manifest)

    _carry_out(plan, src, train, val, mode, in_place)
    manifest["status"] = "complete"
    _write_manifest(manifest_path, manifest)
    if train != src:
        # Same record in the train tree (ImageFolder ignores top-level files).
        _write_manifest(train / MANIFEST, manifest)
    return _result(manifest, manifest_path)


def _carry_out(plan: dict, src: Path, train: Path, val: Path, mode: Mode, in_place: bool) -> None:
    """Moves, copies or links each planned file; a file already there (an interrupted run) is
    left to ``_transfer``. In place, the training images stay where they are."""
    for class_name, sets in sorted(plan.items()):
        for subset, root in (("val", val), ("train", train)):
            if subset == "train" and in_place:
                continue
            (root / class_name).mkdir(parents=True, exist_ok=True)
            for name in sets[subset]:
                _transfer(src / class_name / name, root / class_name / name, mode)


def _check_args(val_fraction: float, seed: int, mode: str) -> None:
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0.0 < val_fraction < 1.0  # also rejects NaN
    ):
        raise SplitError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SplitError(f"seed must be an integer, got {seed!r}")
    if mode not in _MODES:
        raise SplitError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")


def _check_paths(src: Path, train: Path, val: Path, mode: str) -> bool:
    """Validate the three roots; True for an in-place split (train == src)."""
    if not src.is_dir():
        raise SplitError(f"src_dir is not a directory: {src}")
    if train == val:
        raise SplitError(f"out_train and out_val must differ, both are {train}")
    in_place = train == src
    if in_place and mode != "move":
        raise SplitError("out_train may equal src_dir only with mode='move' (in-place split)")
    pairs = [(val, src, "out_val", "src_dir"), (val, train, "out_val", "out_train")]
    if not in_place:
        pairs.append((train, src, "out_train", "src_dir"))
    for a, b, name_a, name_b in pairs:
        if a.is_relative_to(b) or b.is_relative_to(a):
            raise SplitError(f"{name_a} ({a}) and {name_b} ({b}) must not contain each other")
    return in_place


def _require_empty(root: Path, name: str) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SplitError(
            f"{name} {root} is not empty and holds no matching split; refusing to overwrite "
            "(remove it or choose another folder)"
        )


def _make_plan(src: Path, val_fraction: float, seed: int) -> dict[str, dict[str, list[str]]]:
    by_class: dict[str, list[str]] = {}
    for class_name, path in list_image_folder(src):
        by_class.setdefault(class_name, []).append(path.name)
    plan: dict[str, dict[str, list[str]]] = {}
    for class_name, names in sorted(by_class.items()):
        names = sorted(names)
        n_val = 0
        if len(names) >= 2:
            n_val = min(max(math.floor(len(names) * val_fraction + 0.5), 1), len(names) - 1)
        # str seeds are hashed with SHA-512: stable across runs and platforms.
        random.Random(f"{seed}/{class_name}").shuffle(names)
        plan[class_name] = {"train": sorted(names[n_val:]), "val": sorted(names[:n_val])}
    return plan


def _transfer(src: Path, dst: Path, mode: str) -> None:
    """Idempotent copy/move/link of one file (safe to repeat after a crash)."""
    if dst.exists():
        if mode == "move" and src.exists() and not src.samefile(dst):
            raise SplitError(f"both {src} and {dst} exist; cannot finish the move")
        return
    if mode == "move":
        try:
            os.rename(src, dst)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        _atomic_copy(src, dst)
        src.unlink()
    elif mode == "link":
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            _atomic_copy(src, dst)
    else:
        _atomic_copy(src, dst)


def _atomic_copy(src: Path, dst: Path) -> None:
    # Through a temporary name so that a crash never leaves a partial dst
    # that a resumed run would take for finished.
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)  # copy2 would write through a symlink planted there
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SplitError(f"unreadable split manifest {path}: {exc}") from exc
    return data if isinstance(data, dict) and isinstance(data.get("plan"), dict) else None


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open_new(tmp, "w", encoding="utf-8") as fh:  # never through a symlink planted at .tmp
        fh.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _result(manifest: dict[str, Any], path: Path) -> SplitResult:
    plan = manifest["plan"]
    return SplitResult(
        train={c: len(s["train"]) for c, s in sorted(plan.items())},
        val={c: len(s["val"]) for c, s in sorted(plan.items()) if s["val"]},
        train_only=sorted(c for c, s in plan.items() if not s["val"]),
        manifest=path,
    )
