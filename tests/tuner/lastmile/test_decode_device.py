"""tuner predict / evaluate decoding on a device: ``decoded_batches`` with a device (here the CPU,
through decode_jpeg's list API, the code path nvjpeg takes on CUDA) gives the same images, skips the
same files, and the members' transforms take the tensors as they take Pillow's images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.checkpoint import save_checkpoint
from trainables.config import TrialConfig
from trainables.inference import load_classifier
from trainables.models import build_model
from tuner.errors import UserError
from tuner.lastmile.ensemble import Ensemble, Member
from tuner.lastmile.images import decoded_batches
from tuner.lastmile.predict import pick_decode_device

CPU = torch.device("cpu")


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 90 * np.sin(x / 6 + seed), 128 + 90 * np.cos(y / 5), 255 * y / height], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture
def test_folder(tmp_path):
    """<id>.<ext> files: JPEGs (one rotated by EXIF), a PNG and two files that are no image."""
    exif = Image.Exif()
    exif[0x0112] = 8
    paths = []
    for index in range(1, 6):
        path = tmp_path / f"{index}.jpg"
        photo(40 + 7 * index, 30 + 5 * index, index).save(path, exif=exif if index == 3 else b"")
        paths.append(path)
    photo(36, 36, 9).save(tmp_path / "6.png")
    (tmp_path / "7.jpg").write_bytes(b"<html>gone</html>")
    (tmp_path / "8.jpg").write_bytes((tmp_path / "1.jpg").read_bytes()[:200])  # truncated
    return sorted(tmp_path.iterdir(), key=lambda p: int(p.stem))


def test_device_batches_hold_the_same_images_and_skip_the_same_files(test_folder):
    pillow = list(decoded_batches(test_folder, 3))
    device = list(decoded_batches(test_folder, 3, CPU))
    assert [(p, s) for p, _, s in pillow] == [(p, s) for p, _, s in device]
    assert [s for _, _, s in device] == [[], [], [6, 7]]
    for (_, pil_images, _), (_, tensors, _) in zip(pillow, device):
        for image, tensor in zip(pil_images, tensors):
            assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8
            assert np.array_equal(tensor.numpy(), np.asarray(image).transpose(2, 0, 1))  # exact on CPU


def test_members_predict_the_same_from_tensors(test_folder, tmp_path):
    torch.manual_seed(0)
    config = TrialConfig(train_dir="train", val_dir="val", image_size=32, arch="resnet18", width=0.125)
    model = build_model("resnet18", num_classes=3, image_size=32, width=0.125)
    checkpoint = save_checkpoint(tmp_path / "ckpt", config=config.to_dict(),
                                 class_to_idx={"a": 0, "b": 1, "c": 2}, model=model.state_dict(),
                                 normalisation={"mean": [0.5] * 3, "std": [0.25] * 3})
    ensemble = Ensemble([Member(load_classifier(checkpoint))])
    [(_, pil_images, _)] = decoded_batches(test_folder[:6], 8)
    [(_, tensors, _)] = decoded_batches(test_folder[:6], 8, CPU)
    for tta in ("none", "five-crop"):
        expected = ensemble.probabilities(pil_images, tta)
        got = ensemble.probabilities(tensors, tta)
        # Pillow's resize vs torchvision's on uint8 tensors: within one grey level.
        assert torch.allclose(got, expected, atol=5e-3), tta


def test_decode_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_decode_device("auto", "cpu") is None  # a model on the CPU: Pillow
    assert pick_decode_device("cpu", "cuda") is None
    with pytest.raises(UserError, match="--decode-device cuda: no CUDA device on this machine"):
        pick_decode_device("cuda", "cpu")
