"""``tuner data demo | download | stats | split | cache``: parse, call ``tuner.datasets``, print a summary.

Bad input (a malformed competition JSON, a bad fraction, a missing folder, another download already
running, …) is raised as ``UserError``: one line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tuner.datasets.competition import load_competition_json
from tuner.datasets.demo import unpack_demo_data
from tuner.datasets.download import DownloadInProgressError, download_images
from tuner.datasets.split import split_validation
from tuner.datasets.stats import channel_stats, default_stats_path, save_stats
from tuner.errors import UserError
from tuner.terminal import echo  # names come from the data: control characters escaped

__all__ = ["register"]


def cmd_demo(args: argparse.Namespace) -> int:
    counts = unpack_demo_data(args.out)
    echo(f"sample data in {args.out}: {counts['train']} train, {counts['val']} val, "
         f"{counts['test']} test images, answer key test_labels.csv")
    return 0


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """The data modules' own errors (ValueError subclasses, missing folders) become UserError."""
    try:
        yield
    except (ValueError, DownloadInProgressError) as err:
        raise UserError(str(err)) from None
    except OSError as err:  # missing folder, permission denied, disk full
        where = f"{err.filename}: " if err.filename else ""
        raise UserError(f"{where}{err.strerror or err}") from None


# --- download ---
def cmd_download(args: argparse.Namespace) -> int:
    with _user_errors():
        index = load_competition_json(args.json)
        for warning in index.warnings:
            echo(f"tuner: warning: {warning}", file=sys.stderr)
        summary = download_images(
            index, out_dir=args.out, workers=args.workers, timeout_s=args.timeout,
            deadline_s=args.deadline, retries=args.retries, max_side=args.max_side, max_bytes=args.max_bytes,
            rewrite_host=args.rewrite_host, allow_loopback=args.allow_loopback,
            allow_private=args.allow_private, progress=not args.quiet,
        )
    echo(f"downloaded {summary.downloaded} of {summary.requested} images into {args.out} "
         f"({summary.skipped_existing} already there, {summary.skipped_in_json} without a usable "
         f"URL in {Path(args.json).name})")
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.failed.items()))
    echo(f"failed: {summary.failed_total}" + (f" ({reasons})" if reasons else ""))
    echo(f"failures CSV: {summary.failures_csv}")
    return 0


# --- stats ---
def cmd_stats(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    train = root / "train" if (root / "train").is_dir() else root
    with _user_errors():
        stats = channel_stats(train, resize=args.resize or None, workers=args.workers,
                              progress=not args.quiet)
        path = save_stats(stats, args.out or default_stats_path(train))
    mean = " ".join(f"{v:.4f}" for v in stats["mean"])
    std = " ".join(f"{v:.4f}" for v in stats["std"])
    echo(f"mean {mean}  std {std}  (RGB in [0, 1]; {stats['count']} images of {train}, "
         f"{stats['skipped']} unreadable)")
    echo(f"wrote {path}")
    return 0


# --- split ---
def cmd_split(args: argparse.Namespace) -> int:
    src = Path(args.dir)
    default_root = src.parent / f"{src.name}-split"
    out_train = Path(args.out_train) if args.out_train else default_root / "train"
    out_val = Path(args.out_val) if args.out_val else default_root / "val"
    with _user_errors():
        result = split_validation(src, val_fraction=args.val_fraction, seed=args.seed,
                                  out_train=out_train, out_val=out_val, mode=args.mode)
    echo(f"split {src}: {sum(result.train.values())} train, {sum(result.val.values())} val images "
         f"over {len(result.train)} classes (val fraction {args.val_fraction}, seed {args.seed}, "
         f"{args.mode})")
    echo(f"train: {out_train}")
    echo(f"val:   {out_val}")
    if result.train_only:
        echo(f"classes with one image, in train only: {', '.join(result.train_only[:20])}")
    echo(f"manifest: {result.manifest}")
    return 0


# --- cache ---
def cmd_cache(args: argparse.Namespace) -> int:
    from tuner.datasets.cache import build_caches  # torch (the cache reader): this command only
    from trainables.gpu_decode import resolve_decode_device  # torch, torchvision: this command only

    with _user_errors():
        device = resolve_decode_device(args.decode_device)
        results = build_caches(args.dir, size=args.size, fit=args.fit, workers=args.workers,
                               force=args.force, progress=not args.quiet, decode_device=device)
    for result in results:
        if not result.built:
            how = "up to date"
        elif result.resumed:
            how = f"built in {result.seconds:.1f} s, resuming after {result.resumed} images"
        else:
            how = f"built in {result.seconds:.1f} s"
        if result.built and result.decoded_on != "cpu":
            how += f", JPEGs decoded on {result.decoded_on}"
        echo(f"cache {result.split} at {result.size} px: {result.images} images "
             f"({result.unreadable} unreadable), {result.nbytes / 2**20:.1f} MiB, {how}")
        echo(f"  pixels {result.pixels}")
        echo(f"  manifest {result.manifest}")
    return 0


def register(data: argparse._SubParsersAction) -> None:
    """Adds ``demo``, ``download``, ``stats``, ``split`` and ``cache`` to the ``tuner data`` subparsers."""
    demo = data.add_parser("demo", help="lay out the shipped CIFAR-10 sample like the competition")
    demo.add_argument("--out", required=True, help="target folder")
    demo.set_defaults(func=cmd_demo)

    down = data.add_parser("download", help="download a competition JSON's images (resumable)")
    down.add_argument("--json", required=True, help="train.json / validation.json / test.json")
    down.add_argument("--out", required=True, help="ImageFolder root to fill (<label>/<id>.jpg)")
    down.add_argument("--workers", type=int, default=8, help="concurrent downloads (default 8)")
    down.add_argument("--timeout", type=float, default=10.0, help="seconds per connect/read (10)")
    down.add_argument("--deadline", type=float,
                      help="seconds one attempt may take in all: connect, headers, every redirect, "
                      "the body (default 6 x --timeout); a server that drips bytes is cut off here")
    down.add_argument("--retries", type=int, default=3, help="extra attempts on transient errors")
    down.add_argument("--max-side", type=int, help="shrink images to at most this many pixels")
    down.add_argument("--max-bytes", type=int, default=30 * 2**20, help="largest body, bytes")
    down.add_argument("--rewrite-host", metavar="URL",
                      help="send every request to this http://host:port instead (mirrors, tests)")
    down.add_argument("--allow-loopback", action="store_true",
                      help="permit 127.0.0.0/8 and ::1 (refused by default: SSRF guard)")
    down.add_argument("--allow-private", action="store_true",
                      help="permit private (RFC 1918 / ULA) addresses, e.g. a mirror on the LAN")
    down.add_argument("--quiet", action="store_true", help="no progress bar")
    down.set_defaults(func=cmd_download)

    stats = data.add_parser("stats", help="channel mean/std -> stats.json beside the data")
    stats.add_argument("dir", help="data root holding train/, or an ImageFolder tree")
    stats.add_argument("--resize", type=int, default=64, help="count at this size (0: native)")
    stats.add_argument("--workers", type=int, default=2)
    stats.add_argument("--out", help="where to write (default: <data root>/stats.json)")
    stats.add_argument("--quiet", action="store_true", help="no progress bar")
    stats.set_defaults(func=cmd_stats)

    split = data.add_parser("split", help="stratified, seeded train/val split of an ImageFolder")
    split.add_argument("dir", help="ImageFolder tree to split")
    split.add_argument("--val-fraction", type=float, required=True, help="share per class, (0, 1)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out-train", help="default: <dir>-split/train beside <dir>")
    split.add_argument("--out-val", help="default: <dir>-split/val beside <dir>")
    split.add_argument("--mode", choices=("copy", "move", "link"), default="copy",
                       help="link = hard links (no extra space)")
    split.set_defaults(func=cmd_split)

    cache = data.add_parser("cache", help="decode every image once into a memory-mapped cache")
    cache.add_argument("dir", help="data root (caches each <split>/ tree) or one ImageFolder tree")
    cache.add_argument("--size", type=int, required=True, help="side of the stored images, pixels")
    cache.add_argument("--fit", choices=("squash", "crop", "pad"), default="squash",
                       help="squash (default, as the trainable resizes), crop or pad to square")
    cache.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="decoding processes (default: all cores)")
    cache.add_argument("--decode-device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                       help="where JPEGs are decoded: auto (default) = the GPU when there is one and "
                       "its decoder works (batches of nvjpeg; other formats with Pillow), else Pillow in "
                       "--workers processes; cuda without a usable GPU is an error")
    cache.add_argument("--force", action="store_true", help="rebuild even if up to date")
    cache.add_argument("--quiet", action="store_true", help="no progress bar")
    cache.set_defaults(func=cmd_cache)
