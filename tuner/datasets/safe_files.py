"""Open output files without following a symlink planted at their path.

The data folders tuner writes into (downloads, the demo sample) may be shared or
prepared by someone else. A symlink left at ``download_failures.csv`` or
``<id>.jpg.part`` would otherwise make tuner truncate and overwrite whatever it
points to (another user's file, a config) with tuner's permissions.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Any

__all__ = ["open_lock_file", "open_new"]

# O_NOFOLLOW is POSIX; elsewhere O_EXCL alone still refuses an existing link.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_new(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> IO[Any]:
    """Replace ``path`` by a fresh file and open it for writing (``"w"`` or ``"wb"``).

    Unlink-then-create-exclusive: whatever was at ``path`` (a stale file, a symlink)
    is removed, never followed; a link planted between the two calls makes the
    create fail (O_EXCL) instead of writing through it.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_new writes only ('w' or 'wb'), got {mode!r}")
    Path(path).unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    fd = os.open(path, flags, 0o644)
    try:
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def open_lock_file(path: str | os.PathLike[str]) -> IO[str]:
    """Open (creating if needed) a lock file, refusing a symlink at ``path``.

    Not unlinked first: another run may hold a lock on the existing inode.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symlink; refusing to follow it") from None
        raise
    return os.fdopen(fd, "a+")
