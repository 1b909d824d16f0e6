"""A whole trial without Ray: exact resume, artifacts, divergence, dev-decay's self-stop, head-only."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.trainables.conftest import CLASSES, TRAIN_PER_CLASS, tiny_config
from trainables.checkpoint import CheckpointError, load_checkpoint
from trainables.data import EpochSampler, build_splits
from trainables.runner import run_trial
from trainables.trial_state import TrialState

TIMING = ("epoch_time_s", "images_per_s")


class Interrupted(Exception):
    pass


class Recorder:
    """A ``report`` that keeps metrics and a copy of every checkpoint directory."""

    def __init__(self, root: Path, stop_after: int | None = None) -> None:
        self.root, self.stop_after = root, stop_after
        self.metrics: list[dict] = []
        self.dirs: list[Path | None] = []

    def __call__(self, metrics: dict, directory: Path | None) -> None:
        self.metrics.append(dict(metrics))
        kept = None
        if directory is not None:
            kept = self.root / f"epoch{metrics['epoch']}"
            shutil.copytree(directory, kept)
        self.dirs.append(kept)
        if self.stop_after is not None and metrics["epoch"] == self.stop_after:
            raise Interrupted  # the machine went away after this epoch's checkpoint


def _without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


RESUME_SETTINGS = dict(epochs=4, augmentation="journal", train_subset=64, decay_patience=0)


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory) -> Recorder:
    recorder = Recorder(tmp_path_factory.mktemp("straight"))
    run_trial(tiny_config(tiny_data, **RESUME_SETTINGS), report=recorder)
    return recorder


def test_resume_after_two_epochs_matches_four_straight_epochs(straight, tiny_data, tmp_path):
    config = tiny_config(tiny_data, **RESUME_SETTINGS)
    first = Recorder(tmp_path / "first", stop_after=2)
    with pytest.raises(Interrupted):
        run_trial(config, report=first)
    second = Recorder(tmp_path / "second")
    outcome = run_trial(config, report=second, resume_from=first.dirs[-1])
    resumed = first.metrics + second.metrics
    assert [m["epoch"] for m in resumed] == [1, 2, 3, 4] and outcome.status == "completed"
    assert [_without_timing(m) for m in resumed] == [_without_timing(m) for m in straight.metrics]
    a = load_checkpoint(straight.dirs[-1])
    b = load_checkpoint(second.dirs[-1])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["optimizer"]["state"][0]["momentum_buffer"].equal(b["optimizer"]["state"][0]["momentum_buffer"])


def test_reports_carry_the_metric_interface_and_final_only_last(straight):
    names = {"train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "epoch",
             "epoch_time_s", "images_per_s", "skipped_images", "status", "final"}
    assert all(names <= set(m) for m in straight.metrics)
    assert [m["final"] for m in straight.metrics] == [False, False, False, True]
    assert [m["status"] for m in straight.metrics] == ["running"] * 3 + ["completed"]
    assert all(0 <= m["val_acc"] <= m["val_top5"] <= 1 for m in straight.metrics)


def test_last_checkpoint_holds_the_evaluation_artifacts(straight, tiny_data):
    last = straight.dirs[-1] / "artifacts"
    config = json.loads((last / "config.json").read_text())
    assert config == tiny_config(tiny_data, **RESUME_SETTINGS).to_dict()
    with open(last / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == sorted(p.name for p in (tiny_data / "val").iterdir())
    assert sum(int(r["correct"]) for r in rows) / sum(int(r["images"]) for r in rows) == pytest.approx(
        straight.metrics[-1]["val_acc"])
    for figure in ("confusion.png", "mistakes.png"):
        assert (last / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not (straight.dirs[0] / "artifacts" / figure).exists()  # figures only at the end
    assert (straight.dirs[0] / "artifacts" / "per_class.csv").is_file()  # tables every epoch
    summary = json.loads((last / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final"] is True


def test_checkpoints_load_weights_only_and_refuse_pickled_code(straight, tmp_path):
    content = load_checkpoint(straight.dirs[-1])  # torch.load(weights_only=True) inside
    assert content["class_to_idx"]["airplane"] == 0 and content["config"]["epochs"] == 4
    assert content["epoch"] == 4 and len(content["history"]) == 4

    torch.save({"model": {}, "payload": Path("/etc/passwd")}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path)


def test_workers_do_not_change_an_epoch(tiny_data, tmp_path):
    # Order and augmentation of every image depend on (seed, epoch, index), not on who loads it.
    results = []
    for workers in (0, 2):
        recorder = Recorder(tmp_path / f"w{workers}")
        run_trial(tiny_config(tiny_data, epochs=1, augmentation="journal", num_workers=workers),
                  report=recorder)
        results.append(_without_timing(recorder.metrics[0]))
    assert results[0] == results[1]


def test_a_nan_loss_ends_the_trial_as_diverged(tiny_data, tmp_path):
    recorder = Recorder(tmp_path)
    outcome = run_trial(tiny_config(tiny_data, epochs=3, lr=1e12, schedule="none"), report=recorder)
    assert outcome.status == "diverged" and outcome.epochs_done == 0
    last = recorder.metrics[-1]
    assert last["status"] == "diverged" and last["final"] is True and last["epoch"] == 1
    assert recorder.dirs[-1] is None  # NaN weights are not checkpointed
    assert len(recorder.metrics) == 1  # ended at once, not after its 3 epochs


def test_dev_decay_ends_the_trial_itself_once_lr_is_below_min_lr(tiny_data, tmp_path):
    # Head-only with a tiny rate: the validation accuracy cannot improve, so patience 0 decays at
    # epoch 2 to 5e-7 < min_lr 6e-7 and the trial stops itself, 3 epochs early, as converged.
    recorder = Recorder(tmp_path)
    config = tiny_config(tiny_data, epochs=5, lr=1e-6, finetune="head", decay_patience=0, min_lr=6e-7)
    outcome = run_trial(config, report=recorder)
    assert outcome.status == "converged" and outcome.epochs_done == 2
    assert [m["status"] for m in recorder.metrics] == ["running", "converged"]
    assert recorder.metrics[-1]["final"] is True


def test_head_only_trains_only_the_head_and_is_tagged(tiny_data, tmp_path, caplog):
    recorder = Recorder(tmp_path)
    outcome = run_trial(tiny_config(tiny_data, finetune="head", lr=0.5, schedule="none"), report=recorder)
    assert outcome.tags == {"tuner.finetune": "head-only"}
    assert "ONLY THE CLASSIFIER HEAD IS TRAINED" in caplog.text
    first, last = (load_checkpoint(d)["model"] for d in recorder.dirs)
    moved = sorted(k for k in first if not torch.equal(first[k], last[k]))
    assert moved == ["fc.bias", "fc.weight"]
    summary = json.loads((recorder.dirs[-1] / "artifacts" / "summary.json").read_text())
    assert summary["tags"] == {"tuner.finetune": "head-only"}


def test_train_subset_is_fixed_reshuffled_and_scales_lr_when_asked(tiny_data):
    config = tiny_config(tiny_data, train_subset=20, lr_scaling="linear", lr=0.08)
    assert TrialState(config).lr == pytest.approx(0.08 * 20 / (CLASSES * TRAIN_PER_CLASS))
    splits = [build_splits(config.train_dir, config.val_dir, train_transform=None, eval_transform=None,
                           subset=20, seed=3).train_paths for _ in range(2)]
    assert splits[0] == splits[1] and len(set(splits[0])) == 20
    sampler = EpochSampler(20, seed=3, shuffle=True)
    orders = []
    for epoch in (1, 2, 1):
        sampler.set_epoch(epoch)
        orders.append([index for index, _ in sampler])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(20))
    assert orders[0] != orders[1] and orders[0] == orders[2]


def test_cache_auto_reads_the_decoded_image_cache_and_trains_the_same(tiny_data, tmp_path):
    from tuner.datasets.cache import build_caches

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    build_caches(data, size=32, workers=1, progress=False)
    runs = {}
    for cache in ("auto", "off"):
        recorder = Recorder(tmp_path / cache)
        run_trial(tiny_config(data, epochs=1, cache=cache), report=recorder)
        summary = json.loads((recorder.dirs[-1] / "artifacts" / "summary.json").read_text())
        runs[cache] = (_without_timing(recorder.metrics[0]), sorted(summary["caches"]))
    assert runs["auto"][1] == ["train", "val"] and runs["off"][1] == []
    # At 32 px the cached pixels are the decoded JPEGs: the same epoch, number for number.
    assert runs["auto"][0] == runs["off"][0]


# Every recipe knob at once: per-batch one-cycle, EMA, MixUp/CutMix, smoothing, clipping, two-stage
# fine-tuning with a backbone rate, TrivialAugment with erasing. Resumed after epoch 2 (inside the
# one-cycle's rise, after the head-only epoch), it must give the very same epochs and weights.
RECIPE_SETTINGS = dict(epochs=3, train_subset=32, schedule="onecycle", pct_start=0.5, lr=0.1,
                       optimizer="sgd", nesterov=True, ema_decay=0.9, mixup_alpha=0.4, cutmix_alpha=1.0,
                       mix_prob=0.8, label_smoothing=0.1, grad_clip_norm=5.0, head_epochs=1,
                       backbone_lr_mult=0.5, augmentation="trivialaugment", aug={"erasing": 0.25})


def test_a_trial_with_every_recipe_knob_resumes_exactly(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **RECIPE_SETTINGS)
    straight = Recorder(tmp_path / "straight")
    run_trial(config, report=straight)
    first = Recorder(tmp_path / "first", stop_after=2)
    with pytest.raises(Interrupted):
        run_trial(config, report=first)
    second = Recorder(tmp_path / "second")
    run_trial(config, report=second, resume_from=first.dirs[-1])
    resumed = first.metrics + second.metrics
    assert [_without_timing(m) for m in resumed] == [_without_timing(m) for m in straight.metrics]
    assert all("val_acc_raw" in m for m in resumed)
    a, b = load_checkpoint(straight.dirs[-1]), load_checkpoint(second.dirs[-1])
    for part in (a["model"], a["ema"]["model"]):
        other = b["model"] if part is a["model"] else b["ema"]["model"]
        for key, value in part.items():
            assert torch.equal(value, other[key]), key
    assert a["schedule"]["last_epoch"] == b["schedule"]["last_epoch"] == 3 * 2  # 2 batches per epoch
