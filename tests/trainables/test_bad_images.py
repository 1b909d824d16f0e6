"""Web-scraped data: every bad image kind is either decoded right or skipped and counted, never fatal."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.trainables.conftest import tiny_config
from trainables.data import RobustImageFolder, load_rgb_image, make_loader
from trainables.engine import evaluate
from trainables.models import build_model
from trainables.runner import run_trial

UNREADABLE = ("truncated.jpg", "empty.jpg", "html.jpg", "bomb.png")


def _noise(size=(48, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def write_bad_images(folder: Path) -> None:
    """One file of each kind the web hands over, generated with Pillow."""
    folder.mkdir(parents=True, exist_ok=True)
    _noise().save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "full.jpg").unlink()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "html.jpg").write_bytes(b"<!doctype html><html><body>404 Not Found</body></html>")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg")  # pure red
    Image.new("L", (16, 16), 77).save(folder / "gray.jpg")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half fully transparent
    rgba.save(folder / "rgba.png")
    ramp = np.tile(np.array([0, 32768, 65535], dtype=np.uint16), (4, 1))
    Image.fromarray(ramp).save(folder / "sixteen.png")  # a 16-bit grayscale PNG (mode I;16)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; the pixels are stored 90 degrees off
    Image.new("RGB", (40, 20), (0, 200, 0)).save(folder / "exif.jpg", exif=exif)
    # 100 megapixels (over Pillow's 89 MP guard) in 12 kB on disk: a decompression bomb.
    Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad") / "kinds"
    write_bad_images(folder)
    return folder


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_kinds_raise_so_the_dataset_can_skip_them(bad_folder, name):
    with pytest.raises(Image.DecompressionBombWarning if name == "bomb.png" else OSError, match="truncated|cannot identify|exceeds limit"):
        load_rgb_image(bad_folder / name)


def test_readable_kinds_decode_to_upright_rgb(bad_folder):
    cmyk = np.asarray(load_rgb_image(bad_folder / "cmyk.jpg"), dtype=int)
    assert cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 60  # red stays red
    gray = load_rgb_image(bad_folder / "gray.jpg")
    assert gray.mode == "RGB" and np.ptp(np.asarray(gray, dtype=int), axis=2).max() == 0
    rgba = np.asarray(load_rgb_image(bad_folder / "rgba.png"))
    assert (rgba[:, :8] == 255).all() and (rgba[:, 8:] == (0, 0, 255)).all()  # transparent -> white
    sixteen = np.asarray(load_rgb_image(bad_folder / "sixteen.png"))[0, :, 0]
    assert sixteen.tolist() == [0, 128, 255]  # scaled by 65535, not clipped at 255
    exif = load_rgb_image(bad_folder / "exif.jpg")
    assert exif.size == (20, 40)  # rotated upright by its EXIF orientation


def test_bad_images_in_a_trial_are_skipped_counted_and_warned_once(tiny_data, bad_folder, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for image in bad_folder.iterdir():
        shutil.copy(image, data / "train" / "airplane" / image.name)
    reports = []
    with caplog.at_level(logging.WARNING, logger="trainables.data"):
        outcome = run_trial(tiny_config(data, epochs=2), report=lambda m, d: reports.append(m))
    assert outcome.status == "completed"
    assert [m["skipped_images"] for m in reports] == [len(UNREADABLE)] * 2
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert sorted(Path(w.split()[3]).name for w in warned) == sorted(UNREADABLE)  # once per file


def test_mistakes_name_the_right_files_when_images_are_skipped(tiny_data, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(tiny_data / "val", val)
    for class_dir in val.iterdir():  # an unreadable file first in every class shifts all positions
        (class_dir / "0000-broken.jpg").write_bytes(b"not an image")
    dataset = RobustImageFolder(val, transform=lambda image: torch.rand(3, 32, 32))
    loader = make_loader(dataset, batch_size=7, shuffle=False, num_workers=0, seed=0, pin_memory=False)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, image_size=32, width=0.125)
    stats = evaluate(model, loader, torch.device("cpu"), num_classes=10, keep_mistakes=100)
    assert stats.skipped == 10 and stats.images == 40 and len(stats.mistakes) > 20
    for index, true, _ in stats.mistakes:
        path, target = dataset.samples[index]
        assert target == true and not path.endswith("0000-broken.jpg")
