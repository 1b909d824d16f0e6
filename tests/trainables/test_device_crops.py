"""Crops and resizes left to the device (trainables/device_crops.py): the workers draw exactly what
the per-sample pipeline draws, roi_align's batch crops land within a grey level of torchvision's,
``light``'s and ``none``'s windows are the per-sample pipeline's pixels (to the resize's rounding),
BatchFinish finishes a CropPlan batch as it finishes the per-sample one, and a loader over the cache
hands CropPlans through the engine. Run on the CPU here; a trial uses it on CUDA."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as TF

from bench.engine_throughput import per_sample_train_set
from tests.trainables.conftest import tiny_config
from trainables.batch_finish import BatchFinish
from trainables.data import build_splits, make_loader
from trainables.device_crops import FLIP, CropPlan, crop_on_device
from trainables.engine import train_one_epoch
from trainables.models import build_model
from trainables.optim import build_optimizer
from trainables.trial_state import TrialState
from trainables.transforms import (build_batch_tail, build_eval_pixels, build_train_pixels,
                                   crops_can_move_to_device, device_crop_op)
from tuner.datasets.cache import build_cache

ROOT = Path(__file__).resolve().parents[2]

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.24, 0.26)
SIDE, CROP = 96, 80  # the cached square and the trial's size


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """24 of the repository's real photos, squashed to SIDE x SIDE uint8 as the cache holds them."""
    table = pq.read_table(ROOT / "bench" / "photos" / "hymenoptera.parquet", columns=["jpeg"])
    return torch.stack([TF.pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB").resize((SIDE, SIDE)))
                        for data in table.column("jpeg").to_pylist()[:24]])


def _both_ways(photos: torch.Tensor, preset: str, params: dict | None = None, size: int = CROP):
    """(the per-sample pipeline's uint8 batch, the CropPlans the workers would make), same seeds."""
    per_sample = build_train_pixels(preset, size, params)
    deferred = build_train_pixels(preset, size, params, crops_on_device=True)
    expected, plans = [], []
    for seed, image in enumerate(photos):
        torch.manual_seed(seed)
        expected.append(per_sample(image))
        torch.manual_seed(seed)
        plans.append(deferred(image))
    return torch.stack(expected), default_collate(plans)


@pytest.mark.parametrize("preset,params", [("rrc", None), ("journal", {"min_scale": 0.3})])
def test_the_workers_draw_the_crops_and_flips_the_per_sample_pipeline_draws(photos, preset, params):
    expected, plan = _both_ways(photos, preset, params)
    assert isinstance(plan, CropPlan) and plan.pixels.shape == (24, 3, SIDE, SIDE)
    assert torch.equal(plan.pixels, photos)  # handed over untouched
    redone = []
    for image, (top, left, height, width, flip) in zip(photos, plan.boxes.tolist()):
        crop = TF.resized_crop(image, int(top), int(left), int(height), int(width), [CROP, CROP], antialias=True)
        redone.append(crop.flip(-1) if flip else crop)
    assert torch.equal(torch.stack(redone), expected)
    assert 0 < int(plan.boxes[:, FLIP].sum()) < 24  # both kinds of sample were checked


def test_the_batch_crops_land_within_a_grey_level_of_torchvisions(photos):
    expected, plan = _both_ways(photos, "rrc")
    crops = crop_on_device(plan, CROP)
    assert crops.shape == (24, 3, CROP, CROP) and crops.dtype == torch.float32
    apart = (crops - expected.float()).abs()
    assert float(apart.mean()) < 1.0 and float(apart.flatten().quantile(0.99)) <= 6


def test_batch_finish_finishes_a_crop_plan_as_it_finishes_the_per_sample_batch(photos):
    expected, plan = _both_ways(photos, "journal")
    tail = build_batch_tail("journal", {"grayscale": 0.5})
    cropping = BatchFinish(MEAN, STD, erasing=0.5, seed=2, tail=tail, crop_size=CROP,
                           crop_op=crop_on_device)
    plain = BatchFinish(MEAN, STD, erasing=0.5, seed=2, tail=tail)
    ours, theirs = cropping(plan, step=3), plain(expected, step=3)
    assert ours.shape == theirs.shape == (24, 3, CROP, CROP)
    erased = plain.erase_mask(theirs.shape, 3)
    assert erased.any() and bool((ours.permute(1, 0, 2, 3)[:, erased] == 0).all())  # the same boxes
    # Rotation moves pixels by whole positions, so a crop a fraction of a grey level off stays so.
    assert float((ours - theirs).abs().mean()) < 0.03  # in normalised units: ~1.5 grey levels
    with pytest.raises(TypeError, match="without crop_size"):
        plain(plan, step=3)


@pytest.mark.parametrize("preset,params", [("light", None), ("light", {"pad_fraction": 0.5}), ("none", None)])
def test_squashed_windows_on_the_device_are_the_per_sample_pixels(photos, preset, params):
    # Cached at the trial's size (a trial's own cache is), nothing is resized: the windows, their
    # reflected edges and flips are index moves, so the pixels are the per-sample pipeline's exactly.
    expected, plan = _both_ways(photos, preset, params, size=SIDE)
    assert torch.equal(plan.pixels, photos)  # handed over untouched
    windows = device_crop_op(preset)(plan, SIDE)
    assert windows.dtype == torch.float32 and torch.equal(windows, expected.float())
    assert windows.is_contiguous(memory_format=torch.channels_last)  # the layout the model takes
    if preset == "light":  # both kinds of sample, and windows reaching into the padding, were checked
        assert 0 < int(plan.boxes[:, FLIP].sum()) < 24 and bool((plan.boxes[:, :2] < 0).any())
    else:
        assert not plan.boxes[:, FLIP].any() and not plan.boxes[:, :2].any()
    # From a larger cached square the batch is resized first: within the rounding to whole grey levels.
    expected, plan = _both_ways(photos, preset, params, size=CROP)
    apart = (device_crop_op(preset)(plan, CROP) - expected.float()).abs()
    assert float(apart.max()) <= 1.01 and float(apart.mean()) < 0.5


def test_presets_of_crops_resizes_and_flips_only_leave_them_to_the_device():
    for preset in ("rrc", "journal", "light", "none"):
        assert crops_can_move_to_device(preset)
    for preset in ("trivialaugment", "randaugment", "autoaugment"):  # their policies need the crop's pixels
        assert not crops_can_move_to_device(preset)
        with pytest.raises(ValueError, match=f"{preset}: its per-sample ops cannot move"):
            build_train_pixels(preset, CROP, crops_on_device=True)
        with pytest.raises(ValueError, match=f"{preset}: its per-sample ops cannot move"):
            device_crop_op(preset)


def test_a_loader_over_the_cache_hands_crop_plans_through_the_engine(tiny_data, tmp_path):
    # The cache's images are all one square: they stack uncropped. The files' do not, so a split
    # read from files keeps the per-sample crops.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)  # the session's tiny data stays without a cache
    build_cache(data / "train", size=32, workers=1, progress=False)
    deferred = build_train_pixels("rrc", 24, crops_on_device=True)
    cached = build_splits(str(data / "train"), str(data / "val"),
                          train_transform=build_train_pixels("rrc", 24), eval_transform=build_eval_pixels(24),
                          subset=None, seed=0, cache_size=32, cached_train_transform=deferred)
    files = build_splits(str(data / "train"), str(data / "val"),
                         train_transform=build_train_pixels("rrc", 24), eval_transform=build_eval_pixels(24),
                         subset=None, seed=0, cached_train_transform=deferred)
    assert cached.caches.get("train") and not files.caches
    batch = next(iter(make_loader(files.train, batch_size=16, shuffle=True, num_workers=0, seed=0,
                                  pin_memory=False)))
    assert isinstance(batch.images, torch.Tensor) and batch.images.shape == (16, 3, 24, 24)
    loader = make_loader(cached.train, batch_size=16, shuffle=True, num_workers=2, seed=0, pin_memory=False)
    loader.sampler.set_epoch(1)
    batch = next(iter(loader))
    assert isinstance(batch.images, CropPlan) and batch.images.pixels.shape == (16, 3, 32, 32)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, image_size=24, width=0.125)
    optimizer = build_optimizer(model.parameters(), name="sgd", lr=0.01, momentum=0.9, nesterov=False,
                                weight_decay=0.0)
    stats = train_one_epoch(model, loader, optimizer, torch.device("cpu"),
                            finish=BatchFinish(MEAN, STD, crop_size=24, crop_op=crop_on_device))
    assert stats.images == 80 and stats.loss == stats.loss  # every image trained, a finite loss


def test_a_cpu_trial_keeps_its_crops_in_the_workers(tiny_data):
    state = TrialState(tiny_config(tiny_data, augmentation="rrc", max_steps_per_epoch=1))
    assert state.finish_train.crop_size is None
    state.train_loader.sampler.set_epoch(1)
    assert isinstance(next(iter(state.train_loader)).images, torch.Tensor)


@pytest.mark.parametrize("preset", ["rrc", "light"])
def test_a_trial_told_to_crop_on_the_device_trains_from_crop_plans(tiny_data, tmp_path, preset):
    # What a CUDA trial does, forced on the CPU: its loader hands over CropPlans, its finisher crops.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    build_cache(data / "train", size=32, workers=1, progress=False)
    state = TrialState(tiny_config(data, augmentation=preset, image_size=24, max_steps_per_epoch=2),
                       crops_on_device=True)
    assert state.finish_train.crop_size == 24 and state.splits.caches.get("train")
    assert state.finish_train.crop_op is device_crop_op(preset)
    state.train_loader.sampler.set_epoch(1)
    assert isinstance(next(iter(state.train_loader)).images, CropPlan)
    assert state.train_epoch(1).images == 32
    # The engine benchmark's plain loop gets the same images cropped per sample, as a script would.
    plain = per_sample_train_set(state)
    image, _ = plain[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 24, 24) and image.dtype == torch.uint8
