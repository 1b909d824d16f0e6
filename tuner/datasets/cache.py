"""``tuner data cache``: decode every image once into a memory-mapped uint8 file beside the data.

For each ImageFolder split ``DATA/<split>/<class>/<image>`` this writes (layout and reader in
``trainables.cache``)::

    DATA/.cache/<split>_<S>.npy       uint8 [N, 3, S, S]; row i = ImageFolder sample i
    DATA/.cache/<split>_<S>.parquet   manifest: index, id, label, target, path, width, height, ok,
                                      error, split; build metadata in the Parquet schema
    DATA/.cache/<split>_<S>.lock      file lock: two processes or nodes never build the same cache

How an image becomes ``S x S`` (``fit``):

* ``squash`` (default): resized to ``S x S`` ignoring the aspect ratio, which is what the trainable's
  file pipeline does (``Resize((S, S))``) and what ``tuner predict`` feeds a model, so a model
  trained from the cache sees the same geometry at prediction time.
* ``crop``: shorter side to ``S``, centre crop (edges of the longer side are lost).
* ``pad``: longer side to ``S``, centred on black.

Guarantees: idempotent (an up-to-date cache is left alone: same images, size and fit); atomic (the
pixels are written to ``<stem>.npy.partial`` and renamed at the end; the manifest, renamed last, is
the commit mark, so a reader never sees a half-built cache); resumable (decoded rows are recorded in
``<stem>.progress.jsonl`` after each chunk, and a rerun after a crash or Ctrl-C decodes only the rest);
unreadable images are skipped and counted (``ok = false`` in the manifest), never fatal.

Decoding: Pillow in ``workers`` spawned processes (``cache_decode``), or, with ``decode_device``
(``--decode-device``, a CUDA GPU when there is one), the JPEGs in batches with torchvision's
``decode_jpeg`` on that device and the other files with Pillow in this process (``cache_device``).
Both give the same pixels within a few grey levels (bench/gpu_decode.py measures the difference);
the manifest records which decoded (``decoded_on``), the cache key does not.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from trainables.image_files import IMAGE_EXTENSIONS
from trainables.cache import (
    FORMAT_VERSION,
    METADATA_KEY,
    CacheError,
    CachePaths,
    cache_paths,
    fingerprint,
    list_samples,
    read_metadata,
)
from tuner.datasets.cache_decode import FIT_FUNCTIONS, Record, decode_rows
from tuner.datasets.cache_device import decode_rows_on_device

__all__ = ["CacheError", "CacheResult", "build_cache", "build_caches", "find_image_folders"]


@dataclass
class CacheResult:
    """What ``build_cache`` did for one split."""

    split: str
    manifest: Path
    pixels: Path
    size: int
    images: int
    unreadable: int
    built: bool  # False: an up-to-date cache was already there
    resumed: int = 0  # rows kept from an interrupted build
    seconds: float = 0.0
    decoded_on: str = "cpu"  # where this build decoded its JPEGs ("cpu": Pillow in worker processes)

    @property
    def nbytes(self) -> int:
        return self.images * 3 * self.size * self.size


def find_image_folders(data_dir: str | os.PathLike) -> list[Path]:
    """The ImageFolder trees to cache: ``DATA/<split>/`` folders, or ``DATA`` itself if it is one.

    A folder is an ImageFolder tree when one of its (non-hidden) sub-folders holds an image file.
    ``DATA/test/`` with its flat ``<id>.jpg`` files is therefore not one, and is not cached.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CacheError(f"{root}: not a directory")
    splits = [d for d in _subdirs(root) if _is_image_folder(d)]
    if splits:
        return splits
    if _is_image_folder(root):
        return [root]
    raise CacheError(f"{root}: no ImageFolder tree (expected {root}/<split>/<class>/<image> "
                     f"or {root}/<class>/<image>)")


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _is_image_folder(folder: Path) -> bool:
    for class_dir in _subdirs(folder):
        with os.scandir(class_dir) as entries:
            if any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries):
                return True
    return False


def build_caches(
    data_dir: str | os.PathLike,
    *,
    size: int,
    fit: str = "squash",
    workers: int = 2,
    force: bool = False,
    progress: bool = True,
    decode_device: Optional[torch.device] = None,
) -> list[CacheResult]:
    """``build_cache`` for every split that ``find_image_folders(data_dir)`` finds."""
    _check_args(size, fit, workers, 1)  # bad arguments first, before looking at folders
    return [build_cache(folder, size=size, fit=fit, workers=workers, force=force, progress=progress,
                        decode_device=decode_device)
            for folder in find_image_folders(data_dir)]


def build_cache(
    image_dir: str | os.PathLike,
    *,
    size: int,
    fit: str = "squash",
    workers: int = 2,
    chunk_size: int = 256,
    force: bool = False,
    progress: bool = True,
    lock_timeout_s: Optional[float] = None,
    on_chunk: Optional[Callable[[int], None]] = None,
    decode_device: Optional[torch.device] = None,
) -> CacheResult:
    """Decode every image of the ImageFolder ``image_dir`` into its cache (module docstring).

    Args:
        image_dir: ``DATA/<split>`` with ``<class>/<image>`` inside.
        size: side ``S`` of the stored square images, in pixels (>= 8).
        fit: ``squash`` | ``crop`` | ``pad``.
        workers: decoding processes; 1 decodes in this process.
        chunk_size: most images per task (a small build uses smaller ones); the unit of resume.
        force: rebuild even when the cache is up to date.
        progress: tqdm bar on stderr.
        lock_timeout_s: give up waiting for another build after this many seconds (None: wait).
        on_chunk: called with the number of rows done after each chunk is recorded.
        decode_device: None: Pillow in ``workers`` processes; a device (``trainables.gpu_decode.
            resolve_decode_device``): each chunk's JPEGs decoded there in batches (``workers`` unused).

    Raises:
        CacheError: bad arguments, no images, empty class folders, lock timeout, disk too small.
    """
    _check_args(size, fit, workers, chunk_size)
    paths = cache_paths(image_dir, size)
    if not paths.image_dir.is_dir():
        raise CacheError(f"{paths.image_dir}: not a directory")
    paths.directory.mkdir(parents=True, exist_ok=True)
    with _BuildLock(paths, lock_timeout_s):
        classes, samples = _listing(paths.image_dir)
        key = {"version": FORMAT_VERSION, "size": size, "fit": fit,
               "fingerprint": fingerprint(paths.image_dir, classes, samples)}
        existing = None if force else _existing(paths, key)
        if existing is not None:
            return existing
        return _Build(paths, classes, samples, key, workers, chunk_size, progress, on_chunk,
                      decode_device).run()


def _check_args(size: int, fit: str, workers: int, chunk_size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise CacheError(f"size must be an integer >= 8 pixels, got {size!r}")
    if fit not in FIT_FUNCTIONS:
        raise CacheError(f"fit must be one of {', '.join(FIT_FUNCTIONS)}, got {fit!r}")
    if workers < 1:
        raise CacheError(f"workers must be >= 1, got {workers}")
    if chunk_size < 1:
        raise CacheError(f"chunk_size must be >= 1, got {chunk_size}")


class _BuildLock:
    """The build lock; says so on stderr when another process holds it."""

    def __init__(self, paths: CachePaths, timeout_s: Optional[float]) -> None:
        self.lock = FileLock(str(paths.lock))
        self.paths, self.timeout_s = paths, timeout_s

    def __enter__(self) -> None:
        try:
            self.lock.acquire(timeout=0)
            return
        except Timeout:
            tqdm.write(f"waiting for another build of {self.paths.pixels.name} "
                       f"(lock {self.paths.lock})", file=sys.stderr)
        try:
            self.lock.acquire(timeout=-1 if self.timeout_s is None else self.timeout_s)
        except Timeout:
            raise CacheError(f"{self.paths.lock}: another build still holds the lock after "
                             f"{self.timeout_s} s") from None

    def __exit__(self, *exc) -> None:
        self.lock.release()


def _listing(image_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    try:
        classes, samples = list_samples(image_dir)
    except FileNotFoundError:
        raise CacheError(
            f"{image_dir}: no class folders (expected {image_dir}/<class>/<image>)"
        ) from None
    found = {target for _, target in samples}
    empty = [name for i, name in enumerate(classes) if i not in found]
    if empty:
        raise CacheError(f"{image_dir}: class folder(s) {', '.join(empty[:10])} hold no image")
    return classes, samples


def _existing(paths: CachePaths, key: dict) -> Optional[CacheResult]:
    """The result of an up-to-date cache (same key, pixels present), else None."""
    if not paths.manifest.is_file() or not paths.pixels.is_file():
        return None
    try:
        meta = read_metadata(paths.manifest)
    except CacheError:
        return None
    if any(meta.get(k) != v for k, v in key.items()):
        return None
    return CacheResult(paths.image_dir.name, paths.manifest, paths.pixels, key["size"],
                       int(meta["count"]), int(meta["unreadable"]), built=False)


class _Build:
    """One (possibly resumed) build; ``run`` returns its result."""

    def __init__(self, paths: CachePaths, classes, samples, key, workers, chunk_size, progress,
                 on_chunk, decode_device: Optional[torch.device] = None) -> None:
        self.paths, self.classes, self.samples, self.key = paths, classes, samples, key
        self.workers, self.chunk_size, self.progress, self.on_chunk = (
            workers, chunk_size, progress, on_chunk)
        self.partial = paths.directory / f"{paths.stem}.npy.partial"
        self.journal = paths.directory / f"{paths.stem}.progress.jsonl"
        self.shape = (len(samples), 3, key["size"], key["size"])
        self.decode_device = decode_device  # None: Pillow in worker processes

    def run(self) -> CacheResult:
        start = time.perf_counter()
        done = self._resume_or_start()
        resumed = len(done)
        pending = [(row, self.samples[row][0]) for row in range(len(self.samples)) if row not in done]
        # Small builds: at least ~4 chunks per worker, so that no worker idles while one finishes.
        # A device decodes a whole chunk per call in this one process: chunks as large as allowed.
        parallel = 1 if self.decode_device is not None else self.workers
        step = max(1, min(self.chunk_size, -(-len(pending) // (4 * parallel))))
        chunks = [pending[i : i + step] for i in range(0, len(pending), step)]
        with open(self.journal, "a", encoding="utf-8") as journal, tqdm(
            total=len(self.samples), initial=resumed, disable=not self.progress, unit="img",
            desc=f"cache {self.paths.stem}",
        ) as bar:
            for records in self._decode(chunks):
                journal.write(json.dumps(records) + "\n")
                journal.flush()  # the worker flushed the pixels first: a recorded row is on disk
                done.update((r[0], r) for r in records)
                bar.update(len(records))
                if self.on_chunk is not None:
                    self.on_chunk(len(done))
        seconds = time.perf_counter() - start
        unreadable = self._commit(done, resumed, seconds)
        return CacheResult(self.paths.image_dir.name, self.paths.manifest, self.paths.pixels,
                           self.key["size"], len(self.samples), unreadable, built=True,
                           resumed=resumed, seconds=seconds, decoded_on=self._decoded_on)

    @property
    def _decoded_on(self) -> str:
        return "cpu" if self.decode_device is None else str(self.decode_device)

    def _resume_or_start(self) -> dict[int, Record]:
        done = _read_journal(self.journal, self.key, self.shape)
        if done is not None and self.partial.is_file() and _shape_of(self.partial) == self.shape:
            return done
        needed = int(np.prod(self.shape))
        free = shutil.disk_usage(self.paths.directory).free
        if needed > free:
            raise CacheError(f"{self.paths.directory}: the cache needs {needed / 2**30:.1f} GiB, "
                             f"only {free / 2**30:.1f} GiB free (choose a smaller --size)")
        # A sparse file of the final size: workers write their rows in place.
        np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.uint8, shape=self.shape)
        header = {"key": self.key, "shape": list(self.shape)}
        self.journal.write_text(json.dumps(header) + "\n", encoding="utf-8")
        return {}

    def _decode(self, chunks: list) -> Iterable[list[Record]]:
        size, fit = self.key["size"], self.key["fit"]
        if self.decode_device is not None:
            for chunk in chunks:
                yield decode_rows_on_device(str(self.partial), chunk, size, fit, self.decode_device)
            return
        if self.workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                yield decode_rows(str(self.partial), chunk, size, fit)
            return
        # spawn: forking a process that holds threads (torch, ray, tqdm's monitor) can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.workers, len(chunks)), mp_context=context) as pool:
            futures = [pool.submit(decode_rows, str(self.partial), c, size, fit) for c in chunks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:  # on Ctrl-C or an error: stop quickly, keep what is recorded
                    future.cancel()

    def _commit(self, done: dict[int, Record], resumed: int, seconds: float) -> int:
        records = [done[row] for row in range(len(self.samples))]
        unreadable = sum(1 for r in records if not r[1])
        meta = {**self.key, "shape": list(self.shape), "dtype": "uint8", "layout": "NCHW",
                "pixels": self.paths.pixels.name, "classes": self.classes,
                "image_dir": str(self.paths.image_dir), "split": self.paths.image_dir.name,
                "count": len(records), "unreadable": unreadable, "resumed_rows": resumed,
                "decoded_on": self._decoded_on,
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": round(seconds, 3)}
        table = _manifest_table(self.paths.image_dir, self.classes, self.samples, records)
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
        tmp_manifest = self.paths.manifest.with_name(self.paths.manifest.name + ".partial")
        pq.write_table(table, tmp_manifest)
        # Manifest out first and in last: a reader sees either no cache or a consistent pair.
        self.paths.manifest.unlink(missing_ok=True)
        os.replace(self.partial, self.paths.pixels)
        os.replace(tmp_manifest, self.paths.manifest)
        self.journal.unlink(missing_ok=True)
        return unreadable


def _read_journal(journal: Path, key: dict, shape: tuple) -> Optional[dict[int, Record]]:
    """Rows recorded by an interrupted build with the same key, or None to start afresh."""
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0])
    except (OSError, IndexError, ValueError):
        return None
    if header.get("key") != key or tuple(header.get("shape", ())) != shape:
        return None
    done: dict[int, Record] = {}
    for line in lines[1:]:
        try:
            records = json.loads(line)
        except ValueError:  # the last line of a killed build may be cut: redo those rows
            continue
        done.update((r[0], r) for r in records)
    return done


def _shape_of(npy: Path) -> Optional[tuple]:
    try:
        return tuple(np.load(npy, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


def _manifest_table(image_dir: Path, classes, samples, records: list[Record]) -> pa.Table:
    paths = [os.path.relpath(path, image_dir) for path, _ in samples]
    return pa.table({
        "index": pa.array(range(len(samples)), pa.int64()),
        "id": pa.array([Path(p).stem for p in paths], pa.string()),
        "label": pa.array([classes[t] for _, t in samples], pa.string()),
        "target": pa.array([t for _, t in samples], pa.int32()),
        "path": pa.array(paths, pa.string()),
        "width": pa.array([r[2] for r in records], pa.int32()),
        "height": pa.array([r[3] for r in records], pa.int32()),
        "ok": pa.array([bool(r[1]) for r in records], pa.bool_()),
        "error": pa.array([r[4] for r in records], pa.string()),
        "split": pa.array([image_dir.name] * len(samples), pa.string()),
    })
