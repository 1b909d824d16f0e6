"""Determinism of one trial (issue 13): same seed, config, thread count and torch build -> the same
per-epoch metrics, float for float, in two separate processes.

What is NOT promised: the same numbers across intra-op thread counts. On CPU the number of torch
threads changes how convolutions and matmuls split (and so sum) their work; the rounding differs in
the last bits from the first step on, and a few epochs of SGD amplify that into visibly different
accuracies (on the demo trial, 1 thread vs 2 threads already differ in the 6th digit of epoch 1's
train_loss). So the trial pins its thread count (``threads``, which a search sets to the trial's CPU
share) before any work: the child below starts with torch's default (every core) and must still
train at the config's count.

Each comparison is between this (pytest) process, which has already run other trials and tests, and a
fresh interpreter (``python -c``): nothing left in either (RNG state, warmed-up kernels, a module's
globals) may change the numbers, and no shared state can make two runs agree by accident. (One fresh
process per comparison, not two: importing torch is most of a run's cost on a busy 2-core machine.) The data is a
tiny cut of the shipped CIFAR-10 sample (``tiny_data``), 32 px, with light augmentation, dev-decay and
the demo trial's optimiser settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMING = ("epoch_time_s", "images_per_s")

# The child runs the trial from its config alone, prints one JSON line per epoch (json writes floats
# with repr, which round-trips exactly), then the thread count the trial left set.
CHILD = r"""
import json, sys
import torch
from trainables.config import TrialConfig
from trainables.runner import run_trial

def report(metrics, directory):
    print("METRICS " + json.dumps(metrics), flush=True)

before = torch.get_num_threads()
run_trial(TrialConfig.from_dict(json.loads(sys.argv[1])), report=report)
print("THREADS " + json.dumps([before, torch.get_num_threads()]), flush=True)
"""


def demo_like_settings(data: Path) -> dict:
    """The issue's demo trial (sgd, lr 0.07636, light augmentation, dev-decay, seed 0, 32 px),
    shrunk to seconds: width 0.125, batches of 16, 2 steps per epoch, 2 epochs, 40 val images."""
    return dict(
        train_dir=str(data / "train"), val_dir=str(data / "val"), image_size=32,
        arch="resnet18", width=0.125, lr=0.07636, batch_size=16, optimizer="sgd",
        augmentation="light", schedule="dev-decay", seed=0, epochs=2, max_steps_per_epoch=2,
        num_workers=0, cache="off", device="cpu", threads=1,
    )


def run_in_fresh_process(settings: dict) -> tuple[list[int], list[dict]]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    used = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("THREADS ")]
    metrics = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("METRICS ")]
    assert len(used) == 1
    return used[0], [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def run_here(settings: dict) -> tuple[int, list[dict]]:
    """The same trial in this process (its thread count restored afterwards)."""
    import torch

    from trainables.config import TrialConfig
    from trainables.runner import run_trial

    reported: list[dict] = []
    before = torch.get_num_threads()
    try:
        run_trial(TrialConfig.from_dict(settings), report=lambda m, _d: reported.append(dict(m)))
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    # Through JSON as the child's numbers are, so both sides are compared the same way.
    reported = json.loads(json.dumps(reported))
    return used, [{k: v for k, v in m.items() if k not in TIMING} for m in reported]


def assert_same_run(first: list[dict], second: list[dict]) -> None:
    assert [m["epoch"] for m in first] == [1, 2] and first[-1]["final"] is True
    # The runs really trained (not a constant the comparison would trivially match).
    assert first[0]["train_loss"] != first[1]["train_loss"]
    for a, b in zip(first, second, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr"):
            assert a[key] == b[key], f"epoch {a['epoch']}: {key} {a[key]!r} != {b[key]!r}"
    assert first == second


def test_two_processes_report_identical_epochs_at_the_configured_thread_count(tiny_data):
    settings = demo_like_settings(tiny_data)
    used_here, first = run_here(settings)
    (default, used_there), second = run_in_fresh_process(settings)
    assert used_here == used_there == 1
    # The child began at torch's default (every core): the config, not the environment, pinned it.
    assert default == (os.cpu_count() or 1) or default > 1
    assert_same_run(first, second)


def test_decoded_image_cache_and_loader_workers_do_not_change_the_epochs(tiny_data, tmp_path):
    """The other suspects of issue 13, across processes: a cache beside the data (``cache: auto``)
    and DataLoader worker processes give the same epochs as decoding the files in the trial's own
    process. (The thread count is the one thing that changes the numbers; it is pinned here.)"""
    import shutil

    from tuner.datasets.cache import build_caches

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(".cache"))
    build_caches(data, size=32, workers=1, progress=False)
    plain = demo_like_settings(data)
    _, from_files = run_here(plain)
    _, from_cache_and_workers = run_in_fresh_process({**plain, "cache": "auto", "num_workers": 2})
    assert_same_run(from_files, from_cache_and_workers)
