"""Test-time augmentation: every registered set feeds the model each of its views exactly once, in its
documented order, and averages their softmax; the older sets (none, flips, crops) answer as before.

The expected views are built here, independently, with torchvision's own ops; the images are real
photos and the model a tiny real backbone (random weights) loaded from a checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from tests.trainables.conftest import tiny_config
from trainables.checkpoint import save_checkpoint
from trainables.data import load_rgb_image
from trainables.inference import Classifier, load_classifier
from trainables.models import build_model
from trainables.transforms import build_eval_transform
from trainables.tta import TTA_VIEWS, get_tta, tta_names

IMAGE_SIZE = 32
EVAL_CROP = 0.875  # not 1: view_transform must keep the checkpoint's own eval crop
IMAGES = 4


def expected_views(name: str, base: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Each set's views by its definition, in its documented order."""
    flip = TF.horizontal_flip
    if name == "none":
        return [base]
    if name == "flips":
        return [base, flip(base)]
    if name == "crops":
        side = base.shape[-1]
        pad = max(1, side // 8)
        padded = TF.pad(base, [pad, pad, pad, pad], padding_mode="reflect")
        corners = [TF.crop(padded, top, left, side, side) for top in (0, 2 * pad) for left in (0, 2 * pad)]
        return [base, flip(base), *corners]
    five = list(TF.five_crop(base, [size, size]))  # top-left, top-right, bottom-left, bottom-right, centre
    ten = five + [flip(crop) for crop in five]
    if name == "five-crop":
        return five
    if name == "ten-crop":
        return ten
    if name == "multi-scale":
        scaled = [TF.resize(base, [round(size * s)] * 2, antialias=True) for s in (1.0, 1.125, 1.25)]
        return [view for image in scaled for view in (image, flip(image))]
    if name == "twelve":
        whole = TF.resize(base, [size, size], antialias=True)
        return [whole, flip(whole), *ten]
    raise AssertionError(f"no expected views for {name!r}: add its definition to this test")


VIEW_COUNTS = {"none": 1, "flips": 2, "crops": 6, "five-crop": 5, "ten-crop": 10, "multi-scale": 6,
               "twelve": 12}
BASE_SIDES = {"none": 32, "flips": 32, "crops": 32, "five-crop": 37, "ten-crop": 37, "multi-scale": 40,
              "twelve": 37}


class Recording(nn.Module):
    """The model, keeping a copy of every batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return self.model(images)


@pytest.fixture(scope="module")
def classifier(tiny_data, tmp_path_factory) -> Classifier:
    torch.manual_seed(0)
    config = tiny_config(tiny_data, aug={"eval_crop": EVAL_CROP})
    model = build_model("resnet18", num_classes=10, image_size=IMAGE_SIZE, width=0.125)
    classes = sorted(p.name for p in (tiny_data / "train").iterdir())
    stats = json.loads((tiny_data / "stats.json").read_text())
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("tta-checkpoint"), config=config.to_dict(),
                                 class_to_idx={c: i for i, c in enumerate(classes)},
                                 model=model.state_dict(), normalisation=stats)
    return load_classifier(checkpoint)


@pytest.fixture(scope="module")
def photos(tiny_data):
    return [load_rgb_image(p) for p in sorted((tiny_data / "val").rglob("*.jpg"))[:: 10][:IMAGES]]


def base_batch(classifier: Classifier, photos, tta: str) -> torch.Tensor:
    transform = classifier.view_transform(tta)
    return torch.stack([transform(photo) for photo in photos])


def recording(classifier: Classifier) -> Classifier:
    return dataclasses.replace(classifier, model=Recording(classifier.model))


def fingerprints(images: torch.Tensor) -> torch.Tensor:
    """One number per image (a fixed random projection), sorted: equal multisets of images give
    equal fingerprints, a dropped or repeated image does not."""
    flat = images.flatten(1).double()
    projection = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (flat @ projection).sort().values


def test_every_registered_set_is_defined_here():
    assert set(tta_names()) == set(VIEW_COUNTS) == set(TTA_VIEWS)
    assert tta_names()[:3] == ("none", "flips", "crops")
    for name in tta_names():
        assert get_tta(name).name == name and get_tta(name).summary.strip()
        assert "\n" not in get_tta(name).summary


@pytest.mark.parametrize("name", sorted(VIEW_COUNTS))
def test_views_follow_their_definition_in_order(classifier, photos, name):
    base = base_batch(classifier, photos, name)
    assert base.shape == (IMAGES, 3, BASE_SIDES[name], BASE_SIDES[name])
    views = get_tta(name).views(base, IMAGE_SIZE)
    expected = expected_views(name, base, IMAGE_SIZE)
    assert len(views) == len(expected) == VIEW_COUNTS[name]
    for index, (view, want) in enumerate(zip(views, expected)):
        assert view.shape == want.shape, f"{name} view {index}"
        torch.testing.assert_close(view, want, atol=1e-5, rtol=1e-5, msg=f"{name} view {index}")
    # No two views are the same image: each one adds something to the average.
    keys = [fingerprints(v) for v in views]
    assert all(not torch.allclose(keys[i], keys[j]) for i in range(len(keys)) for j in range(i))


@pytest.mark.parametrize("name", sorted(VIEW_COUNTS))
def test_probabilities_average_every_view_once(classifier, photos, name):
    base = base_batch(classifier, photos, name)
    expected = expected_views(name, base, IMAGE_SIZE)
    probe = recording(classifier)
    probs = probe.probabilities(base, tta=name)
    seen = probe.model.seen
    # Views of one size share one forward pass; each image of each view goes through once.
    sizes = {v.shape[-1] for v in expected}
    assert len(seen) == len(sizes) and sum(len(batch) for batch in seen) == IMAGES * len(expected)
    for side in sizes:
        fed = torch.cat([batch for batch in seen if batch.shape[-1] == side])
        want = torch.cat([v for v in expected if v.shape[-1] == side])
        torch.testing.assert_close(fingerprints(fed), fingerprints(want), atol=1e-6, rtol=1e-9)
    # The arithmetic mean of the bare model's softmax over the views, one view at a time.
    with torch.no_grad():
        independent = torch.stack([classifier.model(v).softmax(dim=1) for v in expected]).mean(dim=0)
    assert probs.shape == (IMAGES, 10) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, independent, atol=1e-6, rtol=1e-5)
    if name != "none":  # the views change the answer
        assert (probs - classifier.probabilities(base_batch(classifier, photos, "none"))).abs().amax() > 1e-4


def todays_probabilities(model: nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """Classifier.probabilities before the registry, verbatim."""
    views = [images]
    if tta in ("flips", "crops"):
        views.append(torch.flip(images, dims=[3]))
    if tta == "crops":
        side = images.shape[-1]
        pad = max(1, side // 8)
        padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
        offsets = [(0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad)]
        views.extend(padded[..., y : y + side, x : x + side] for y, x in offsets)
    with torch.no_grad():
        return torch.stack([model(v).float().softmax(dim=1) for v in views]).mean(dim=0)


@pytest.mark.parametrize("tta", ["none", "flips", "crops"])
def test_the_older_sets_answer_as_before(classifier, photos, tta):
    images = torch.stack([classifier.transform(photo) for photo in photos])
    before = todays_probabilities(classifier.model, images, tta)
    torch.testing.assert_close(classifier.probabilities(images, tta=tta), before, atol=1e-6, rtol=1e-5)
    if tta == "none":  # the default: one forward pass of the same batch, bit for bit
        assert torch.equal(classifier.probabilities(images), before)


@pytest.mark.parametrize("name", ["ten-crop", "multi-scale", "twelve"])
def test_chunks_bound_the_forward_batch_and_change_nothing(classifier, photos, name):
    base = base_batch(classifier, photos, name)
    whole = classifier.probabilities(base, tta=name, chunk=10_000)
    for chunk in (1, 7):  # 7: chunks straddle the boundary between two views
        probe = recording(classifier)
        torch.testing.assert_close(probe.probabilities(base, tta=name, chunk=chunk), whole,
                                   atol=1e-6, rtol=1e-5)
        assert max(len(batch) for batch in probe.model.seen) <= chunk
        assert sum(len(batch) for batch in probe.model.seen) == IMAGES * VIEW_COUNTS[name]
    with pytest.raises(ValueError, match="chunk: must be >= 1, got 0"):
        classifier.probabilities(base, tta=name, chunk=0)


def test_view_transform_keeps_the_checkpoints_preprocessing(classifier, photos, tiny_data):
    stats = json.loads((tiny_data / "stats.json").read_text())
    assert classifier.mean == tuple(stats["mean"]) and classifier.std == tuple(stats["std"])
    assert classifier.eval_crop == EVAL_CROP
    for name in ("none", "flips", "crops"):
        assert classifier.view_transform(name) is classifier.transform
    larger = build_eval_transform(37, stats["mean"], stats["std"], EVAL_CROP)
    torch.testing.assert_close(classifier.view_transform("five-crop")(photos[0]), larger(photos[0]),
                               atol=0, rtol=0)


def test_a_base_of_the_wrong_size_is_refused(classifier, photos):
    images = torch.stack([classifier.transform(photo) for photo in photos])  # 32 px, not five-crop's 37
    with pytest.raises(ValueError, match=r"tta 'five-crop': base images must be 37 px squares"):
        classifier.probabilities(images, tta="five-crop")


def test_an_unknown_name_is_named_with_the_valid_ones(classifier, photos):
    valid = ", ".join(tta_names())
    message = f"unknown test-time augmentation 'flip'; valid: {valid}"
    images = torch.stack([classifier.transform(photo) for photo in photos])
    for call in (lambda: get_tta("flip"), lambda: classifier.view_transform("flip"),
                 lambda: classifier.probabilities(images, tta="flip")):
        with pytest.raises(ValueError) as raised:
            call()
        assert str(raised.value) == message
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        get_tta(["none"])  # an unhashable value from a YAML file names no set either
