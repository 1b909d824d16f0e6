"""Concurrent, resumable, SSRF-guarded image downloader.

Layout written under ``out_dir``::

    out_dir/<label_id>/<image_id>.jpg   # labelled items (an ImageFolder tree)
    out_dir/<image_id>.jpg              # unlabelled items (test.json)
    out_dir/download_failures.csv       # image_id,url,reason,detail
    out_dir/.download.lock              # held while a download runs

Guarantees:

* Resumable: a final ``.jpg`` is only ever created by ``os.replace`` of a
  fully written ``.jpg.part``, so an existing final file is complete and is
  skipped without any request. ``.part`` files left by a killed run are
  removed at start-up.
* Every image is decoded with Pillow (decompression-bomb guard on),
  EXIF-transposed, converted to RGB, optionally shrunk and re-encoded as
  JPEG, so consumers never see HTML, CMYK, palette or truncated files
  (:mod:`tuner.datasets.image_normalize`).
* One bad item never stops the run: every per-item exception becomes a row
  in ``download_failures.csv`` and a count in :class:`DownloadSummary`.
* Failure reasons (``reason`` column and ``DownloadSummary.failed`` keys):
  network ones from :class:`tuner.datasets.fetch.FetchError` (``blocked``,
  ``dns_error``, ``connection_error``, ``timeout``, ``truncated``,
  ``too_large``, ``content_encoding``, ``redirect_error``, ``http_<status>``,
  ``tls_error``, ``bad_url``) and image ones: ``not_an_image``,
  ``decompression_bomb``, ``truncated`` (decodes only partly),
  ``corrupt_image``, ``write_error``, ``internal_error`` (a bug; the row's
  detail names the exception), and ``bad_id`` (id or label not in
  ``1..2**63-1`` / ``0..2**63-1``; nothing is fetched).
* Output files (``.part``, the failures CSV, the lock) are opened without
  following a symlink planted at their path (:mod:`tuner.datasets.safe_files`).
* Fetching (:mod:`tuner.datasets.fetch`): each redirect hop passes the SSRF
  guard, one deadline bounds a whole attempt, encoded bodies are refused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from tuner.datasets.competition import CompetitionIndex, Item
from tuner.datasets.fetch import FetchError, FetchPolicy, GuardedFetcher
from tuner.datasets.image_normalize import save_image
from tuner.datasets.safe_files import open_lock_file, open_new
from trainables import csvsafe

__all__ = ["DownloadInProgressError", "DownloadSummary", "download_images", "item_path"]

FAILURES_CSV = "download_failures.csv"
LOCK_FILE = ".download.lock"
# Ids and labels become file and folder names: 19 digits at most stays far below NAME_MAX.
# competition.py applies the same bound; this one covers indexes built in memory.
MAX_ID = 2**63


class DownloadInProgressError(RuntimeError):
    """Another process is downloading into the same ``out_dir``."""


@dataclass
class DownloadSummary:
    """Counts for one :func:`download_images` run.

    ``requested == downloaded + skipped_existing + sum(failed.values())``.
    """

    requested: int = 0
    downloaded: int = 0
    skipped_existing: int = 0
    skipped_in_json: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    failures_csv: Path | None = None

    @property
    def failed_total(self) -> int:
        """Number of items that could not be downloaded."""
        return sum(self.failed.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for logs and the CLI)."""
        return {
            "requested": self.requested,
            "downloaded": self.downloaded,
            "skipped_existing": self.skipped_existing,
            "skipped_in_json": self.skipped_in_json,
            "failed": dict(sorted(self.failed.items())),
            "failed_total": self.failed_total,
            "failures_csv": str(self.failures_csv) if self.failures_csv else None,
        }


@dataclass(frozen=True)
class _Config:
    fetcher: GuardedFetcher
    retries: int
    backoff_s: float
    max_side: int | None
    rewrite: tuple[str, str] | None  # (scheme, netloc)


def item_path(out_dir: str | os.PathLike[str], item: Item) -> Path:
    """Final path of ``item``: ``out_dir/<label>/<id>.jpg`` or ``out_dir/<id>.jpg``."""
    # image_id and label are validated ints (competition.py): no path traversal.
    name = f"{int(item.image_id)}.jpg"
    if item.label is None:
        return Path(out_dir) / name
    return Path(out_dir) / str(int(item.label)) / name


def download_images(
    index: CompetitionIndex,
    *,
    out_dir: str | os.PathLike[str],
    workers: int = 8,
    timeout_s: float = 10.0,
    deadline_s: float | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
    max_bytes: int = 30 * 2**20,
    max_side: int | None = None,
    max_redirects: int = 5,
    rewrite_host: str | None = None,
    allow_loopback: bool = False,
    allow_private: bool = False,
    progress: bool = True,
) -> DownloadSummary:
    """Download every item of ``index`` into ``out_dir`` (see module docstring).

    Args:
        index: validated competition data (:func:`load_competition_json`).
        out_dir: destination root; created if missing.
        workers: concurrent download threads (one shared connection pool).
        timeout_s: connect timeout and per-read idle timeout, in seconds.
        deadline_s: seconds one attempt may take in all (connect, headers,
            every redirect hop, body); default ``fetch.TOTAL_TIMEOUT_FACTOR``
            (6) x ``timeout_s``. Each retry gets a fresh deadline.
        retries: extra attempts per URL after connection errors, timeouts,
            truncated bodies and 5xx/408/429 (never after 404 or a bad image).
        backoff_s: sleep before retry ``k`` (0-based) is ``backoff_s * 2**k``.
        max_bytes: larger bodies are abandoned (reason ``too_large``);
            content-encoded (gzip...) bodies are refused (``content_encoding``).
        max_side: if set, images are shrunk so that ``max(w, h) <= max_side``.
        max_redirects: redirect hops followed per request.
        rewrite_host: ``"http://127.0.0.1:8000"`` replaces scheme, host and
            port of every URL from the index (paths kept), for mirrors and
            tests. Redirect targets are not rewritten: they are checked.
        allow_loopback, allow_private: passed to the SSRF guard.
        progress: show a tqdm progress bar on stderr.

    Raises:
        ValueError: invalid argument.
        DownloadInProgressError: another run holds ``out_dir``'s lock.
    """
    _validate_args(workers, timeout_s, retries, backoff_s, max_bytes, max_side, max_redirects)
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0 or None, got {deadline_s}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = DownloadSummary(
        requested=len(index.items),
        skipped_in_json=len(index.skipped),
        failures_csv=out / FAILURES_CSV,
    )
    policy = FetchPolicy(
        timeout_s=float(timeout_s),
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        allow_loopback=allow_loopback,
        allow_private=allow_private,
        deadline_s=None if deadline_s is None else float(deadline_s),
    )
    rewrite = _parse_rewrite(rewrite_host)
    with _exclusive_lock(out), GuardedFetcher(policy, maxsize=workers) as fetcher:
        cfg = _Config(fetcher, retries, float(backoff_s), max_side, rewrite)
        _remove_stale_parts(out)
        pending, rejected = _plan(index, out, summary)
        _run_pool(pending, rejected, cfg, workers, summary, progress)
    return summary


def _plan(index: CompetitionIndex, out: Path, summary: DownloadSummary
          ) -> tuple[list[tuple[Item, Path]], list[tuple[Item, str]]]:
    """What this run downloads (item, destination; label folders created), what it refuses (item,
    rule broken), and, counted in ``summary``, what an earlier run already saved."""
    pending: list[tuple[Item, Path]] = []
    rejected: list[tuple[Item, str]] = []
    for item in index.items:
        problem = _id_problem(item)
        if problem is not None:
            rejected.append((item, problem))
            continue
        dest = item_path(out, item)
        if dest.is_file():
            summary.skipped_existing += 1
        else:
            pending.append((item, dest))
    for label_dir in {dest.parent for _, dest in pending}:
        label_dir.mkdir(parents=True, exist_ok=True)
    return pending, rejected


def _id_problem(item: Item) -> str | None:
    """None when the item's id and label make a sane file name, else the rule broken."""
    if not 0 < item.image_id < MAX_ID:
        return f"image_id {_id_text(item.image_id)} out of range: must be below 2**63"
    if item.label is not None and not 0 <= item.label < MAX_ID:
        return f"label {_id_text(item.label)} out of range: must be below 2**63"
    return None


def _id_text(value: int, cut: int | None = 40) -> str:
    """The id for a CSV cell (whole) or a message (cut); str() itself fails past 4300 digits."""
    try:
        text = str(value)
    except ValueError:
        return "<integer too large to print>"
    return text if cut is None or len(text) <= cut else f"{text[:20]}...({len(text)} digits)"


def _validate_args(
    workers: int,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    max_bytes: int,
    max_side: int | None,
    max_redirects: int,
) -> None:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if retries < 0 or max_redirects < 0:
        raise ValueError("retries and max_redirects must be >= 0")
    if backoff_s < 0:
        raise ValueError(f"backoff_s must be >= 0, got {backoff_s}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")


def _parse_rewrite(rewrite_host: str | None) -> tuple[str, str] | None:
    if rewrite_host is None:
        return None
    parts = urlsplit(rewrite_host)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(
            f"rewrite_host must look like 'http://host:port' (no path), got {rewrite_host!r}"
        )
    return parts.scheme, parts.netloc


@contextlib.contextmanager
def _exclusive_lock(out: Path) -> Iterator[None]:
    """Hold an advisory lock so that two runs never share ``.part`` files."""
    try:
        import fcntl  # POSIX only: a missing module means no locking
    except ImportError:  # non-POSIX: no locking, single run assumed
        yield
        return
    with open_lock_file(out / LOCK_FILE) as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DownloadInProgressError(f"another download is running in {out}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale_parts(out: Path) -> None:
    # Only a killed run leaves these (we hold the lock); their content is unknown.
    for pattern in ("*.jpg.part", "*/*.jpg.part"):
        for part in out.glob(pattern):
            part.unlink(missing_ok=True)


def _run_pool(
    pending: list[tuple[Item, Path]],
    rejected: list[tuple[Item, str]],
    cfg: _Config,
    workers: int,
    summary: DownloadSummary,
    progress: bool,
) -> None:
    """Run the downloads, writing failure rows as results arrive."""
    counts: Counter[str] = Counter()
    assert summary.failures_csv is not None
    with (
        open_new(summary.failures_csv, "w", newline="", encoding="utf-8") as fh,
        tqdm(
            total=summary.requested,
            initial=summary.skipped_existing,
            disable=not progress,
            unit="img",
            desc="download",
        ) as bar,
    ):
        writer = csvsafe.writer(fh)  # urls and details come from the JSON and the servers
        writer.writerow(["image_id", "url", "reason", "detail"])
        for item, problem in rejected:
            counts["bad_id"] += 1
            url = item.urls[0] if item.urls else ""
            writer.writerow([_id_text(item.image_id, cut=None), url, "bad_id", problem])
            bar.update(1)
        fh.flush()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download")
        try:
            # Bounded submission keeps memory flat for very large indexes.
            todo = iter(pending)
            running: dict[Future[tuple[str, str, str] | None], Item] = {}
            while True:
                while len(running) < workers * 4:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    running[pool.submit(_download_one, nxt[0], nxt[1], cfg)] = nxt[0]
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    item = running.pop(fut)
                    failure = _result_of(fut)
                    if failure is None:
                        summary.downloaded += 1
                    else:
                        counts[failure[1]] += 1
                        writer.writerow([item.image_id, *failure])
                        fh.flush()
                    bar.update(1)
                    bar.set_postfix(ok=summary.downloaded, failed=sum(counts.values()))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    summary.failed = dict(counts)


def _result_of(fut: Future[tuple[str, str, str] | None]) -> tuple[str, str, str] | None:
    try:
        return fut.result()
    except Exception as exc:  # _download_one catches everything; belt and braces
        return ("", "internal_error", f"{type(exc).__name__}: {exc}")


def _download_one(item: Item, dest: Path, cfg: _Config) -> tuple[str, str, str] | None:
    """Fetch and store one item; None on success, else ``(url, reason, detail)``."""
    failures: list[tuple[str, FetchError]] = []
    for url in item.urls:
        try:
            data = _fetch_with_retries(_rewrite(url, cfg.rewrite), cfg)
            save_image(data, dest, cfg.max_side)
            return None
        except FetchError as exc:
            failures.append((url, exc))
        except Exception as exc:  # never let one item kill the run
            failures.append((url, FetchError("internal_error", f"{type(exc).__name__}: {exc}")))
    if not failures:
        return ("", "no_url", "item has no URL")
    url, last = failures[-1]
    detail = last.detail
    if len(failures) > 1:
        earlier = "; ".join(f"{u} -> {f.reason}" for u, f in failures[:-1])
        detail = f"{detail} (earlier URLs: {earlier})"
    return (url, last.reason, detail)


def _rewrite(url: str, rewrite: tuple[str, str] | None) -> str:
    if rewrite is None:
        return url
    parts = urlsplit(url)
    return urlunsplit((rewrite[0], rewrite[1], parts.path or "/", parts.query, ""))


def _fetch_with_retries(url: str, cfg: _Config) -> bytes:
    for attempt in range(cfg.retries + 1):
        try:
            return cfg.fetcher.get(url)
        except FetchError as exc:
            if not exc.retryable or attempt == cfg.retries:
                raise
        time.sleep(cfg.backoff_s * 2**attempt)
    raise AssertionError("unreachable")
