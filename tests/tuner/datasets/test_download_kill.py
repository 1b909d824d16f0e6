"""SIGKILL a real download process mid-run, then resume it.

The child process downloads from the loopback server running in this test
process; the server adds a delay to every request so the run lasts long
enough to be killed half-way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

import tuner.datasets
from tuner.datasets.competition import CompetitionIndex, load_competition_json
from tuner.datasets.download import download_images, item_path

from .loopback_server import Behaviour, jpeg, path_of

N_ITEMS = 60
CHILD = r"""
import sys
from tuner.datasets.competition import CompetitionIndex, load_competition_json
from tuner.datasets.download import download_images

json_path, out_dir, base_url, n = sys.argv[1:5]
index = CompetitionIndex(items=load_competition_json(json_path).items[: int(n)])
download_images(index, out_dir=out_dir, workers=2, retries=0, rewrite_host=base_url,
                allow_loopback=True, progress=False)
"""


def finished(out: Path) -> set[Path]:
    return set(out.glob("*/*.jpg"))


def test_sigkill_then_resume(loopback: Any, validation_json: Path, tmp_path: Path) -> None:
    index = CompetitionIndex(items=load_competition_json(validation_json).items[:N_ITEMS])
    for i, item in enumerate(index.items):
        loopback.routes[path_of(item.urls[0])] = Behaviour(body=jpeg(160, 120, i))
    loopback.delay = 0.05  # ~2 s for the whole run with 2 workers
    out = tmp_path / "train"

    repo_root = Path(tuner.datasets.__file__).resolve().parents[2]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])
    )
    args = [
        sys.executable,
        "-c",
        CHILD,
        str(validation_json),
        str(out),
        loopback.base_url,
        str(N_ITEMS),
    ]
    log = tmp_path / "child.log"
    with open(log, "wb") as log_fh:
        child = subprocess.Popen(args, env=env, cwd=tmp_path, stderr=log_fh)
    try:
        deadline = time.monotonic() + 30
        while len(finished(out)) < 10:
            assert child.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "child made no progress"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    done_before = finished(out)
    assert 10 <= len(done_before) < N_ITEMS, "the kill must land mid-run"
    for path in done_before:  # a final file is always complete
        with Image.open(path) as im:
            im.load()

    # A stale .part as a kill during a write leaves it.
    pending = next(item for item in index.items if item_path(out, item) not in done_before)
    stale = item_path(out, pending).with_name(item_path(out, pending).name + ".part")
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"\xff\xd8 half a jpeg")

    time.sleep(0.3)  # let the server finish requests the child sent before dying
    loopback.reset_hits()
    loopback.delay = 0.0
    summary = download_images(
        index, out_dir=out, workers=4, rewrite_host=loopback.base_url, allow_loopback=True,
        progress=False,
    )  # fmt: skip
    assert summary.failed == {}
    assert summary.skipped_existing == len(done_before)
    assert summary.downloaded == N_ITEMS - len(done_before)
    assert not list(out.rglob("*.part"))
    for item in index.items:
        path = item_path(out, item)
        assert path.is_file()
        if path in done_before:
            assert loopback.hits[path_of(item.urls[0])] == 0, "finished file fetched again"
        else:
            assert loopback.hits[path_of(item.urls[0])] >= 1
        with Image.open(path) as im:
            assert im.size == (160, 120)
