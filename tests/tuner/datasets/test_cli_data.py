"""``tuner data download | stats | split | cache`` through the real CLI.

A download and a cache build run ``python -m tuner.cli`` as subprocesses (exit status, output, and
for ``cache`` its decoding worker processes); the other cases call the same parser and handlers
in-process (``tuner.cli.main``), where a subprocess would only add interpreter start-ups. Downloads
go to the loopback server (the competition URLs are rewritten to it; nothing else is contacted).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tuner.cli import main
from tuner.datasets.cache import build_cache
from tuner.datasets.competition import load_competition_json

from .loopback_server import Behaviour, jpeg, path_of

N_ITEMS = 8


def tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def small_json(validation_json: Path, tmp_path: Path) -> Path:
    """The first N_ITEMS images of the real validation.json, with their annotations."""
    data = json.loads(validation_json.read_text())
    images = data["images"][:N_ITEMS]
    ids = {image["image_id"] for image in images}
    subset = {"images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    path = tmp_path / "validation.json"
    path.write_text(json.dumps(subset))
    return path


def serve(loopback: Any, json_path: Path) -> list:
    """Items 0..5 good JPEGs, item 6 a 404, item 7 an HTML page saved as .jpg."""
    items = load_competition_json(json_path).items
    for i, item in enumerate(items):
        behaviour = Behaviour(body=jpeg(64, 48, i))
        if i == 6:
            behaviour = Behaviour(status=404, body=b"gone", content_type="text/html")
        elif i == 7:
            behaviour = Behaviour(body=b"<html>removed</html>", content_type="text/html")
        loopback.routes[path_of(item.urls[0])] = behaviour
    return items


def test_download_prints_the_summary_and_the_failures_csv(loopback: Any, small_json: Path,
                                                          tmp_path: Path) -> None:
    items = serve(loopback, small_json)
    out = tmp_path / "val"
    proc = tuner("data", "download", "--json", str(small_json), "--out", str(out), "--workers", "4",
                 "--timeout", "2", "--retries", "0", "--rewrite-host", loopback.base_url,
                 "--allow-loopback", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"downloaded 6 of 8 images into {out} (0 already there" in proc.stdout
    assert "failed: 2 (http_404 1, not_an_image 1)" in proc.stdout
    failures = out / "download_failures.csv"
    assert f"failures CSV: {failures}" in proc.stdout
    with open(failures, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["reason"] for r in rows) == ["http_404", "not_an_image"]
    for item in items[:6]:
        assert (out / str(item.label) / f"{item.image_id}.jpg").is_file()
    assert set(loopback.hits) == {path_of(item.urls[0]) for item in items}  # only rewritten URLs


def test_download_refuses_loopback_by_default(loopback: Any, small_json: Path, tmp_path: Path,
                                             capsys) -> None:
    serve(loopback, small_json)
    code = main(["data", "download", "--json", str(small_json), "--out", str(tmp_path / "val"),
                 "--rewrite-host", loopback.base_url, "--retries", "0", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "downloaded 0 of 8" in out and "failed: 8 (blocked 8)" in out
    assert sum(loopback.hits.values()) == 0  # the SSRF guard stopped every request before sending


def test_bad_competition_json_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "train.json"
    bad.write_text('{"images": [{"url": ["http://example.com/a.jpg"], "image_id": "../x"}]}')
    assert main(["data", "download", "--json", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "tuner: error: train.json: images[0].image_id: must be a positive integer, got '../x'"]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def labelled(demo_data: Path, tmp_path: Path) -> Path:
    """data/all/<class>/: 20 shipped images of each of 5 classes."""
    for class_dir in sorted((demo_data / "train").iterdir())[:5]:
        target = tmp_path / "data" / "all" / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:20]:
            shutil.copy2(path, target / path.name)
    return tmp_path / "data" / "all"


def test_split_stats_cache_pipeline(labelled: Path, tmp_path: Path, capsys) -> None:
    assert main(["data", "split", str(labelled), "--val-fraction", "0.25", "--mode", "link"]) == 0
    root = labelled.parent / "all-split"  # default: <dir>-split/{train,val} beside <dir>
    assert "split " + str(labelled) + ": 75 train, 25 val images over 5 classes" in capsys.readouterr().out
    assert len(list((root / "val").glob("*/*.jpg"))) == 25

    assert main(["data", "stats", str(root), "--quiet"]) == 0
    stats = json.loads((root / "stats.json").read_text())  # beside train/, where trials look
    out = capsys.readouterr().out
    assert f"mean {stats['mean'][0]:.4f}" in out and stats["count"] == 75

    serial = tmp_path / "serial"
    shutil.copytree(root / "train", serial / "train")
    expected = build_cache(serial / "train", size=24, workers=1, progress=False)
    proc = tuner("data", "cache", str(root), "--size", "24", "--workers", "2", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cache train at 24 px: 75 images (0 unreadable)" in proc.stdout
    assert "cache val at 24 px: 25 images (0 unreadable)" in proc.stdout
    parallel = np.load(root / ".cache" / "train_24.npy")  # decoded by 2 worker processes
    assert np.array_equal(parallel, np.load(expected.pixels))

    assert main(["data", "cache", str(root), "--size", "24", "--quiet"]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


@pytest.mark.parametrize("argv, message", [
    (["data", "cache", "{tmp}/missing", "--size", "32"], "missing: not a directory"),
    (["data", "cache", "{tmp}", "--size", "4"], "size must be an integer >= 8 pixels, got 4"),
    (["data", "split", "{tmp}", "--val-fraction", "1.5"], "val_fraction must be a number in (0, 1)"),
    (["data", "stats", "{tmp}/missing"], "not a directory"),
    (["data", "download", "--json", "{tmp}/none.json", "--out", "{tmp}/o"], "none.json: cannot read"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path,
                                          capsys) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tuner: error: ") and message in err[0], err


def test_download_deadline_flag_bounds_a_whole_attempt(loopback: Any, small_json: Path,
                                                       tmp_path: Path, capsys) -> None:
    """--deadline cuts off a server that drips its headers, which no per-read --timeout catches."""
    items = load_competition_json(small_json).items[:1]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"images": [{"url": list(items[0].urls), "image_id": items[0].image_id}],
                               "annotations": [{"image_id": items[0].image_id, "label_id": items[0].label}]}))
    loopback.routes[path_of(items[0].urls[0])] = Behaviour(kind="drip_headers", delay=0.4, body=jpeg(8, 8, 0))
    out = tmp_path / "val"
    code = main(["data", "download", "--json", str(one), "--out", str(out), "--timeout", "5",
                 "--deadline", "1", "--retries", "0", "--rewrite-host", loopback.base_url,
                 "--allow-loopback", "--quiet"])
    assert code == 0 and "failed: 1 (timeout 1)" in capsys.readouterr().out
    with open(out / "download_failures.csv", newline="") as handle:
        assert "slower than the 1s deadline" in next(csv.DictReader(handle))["detail"]
    assert main(["data", "download", "--json", str(one), "--out", str(out), "--deadline", "0"]) == 2
    assert "deadline" in capsys.readouterr().err
