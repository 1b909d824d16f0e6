"""``tuner data cache`` decoding on a device: the batched path (decode_jpeg's list API on CPU, the
code path nvjpeg takes on CUDA) builds the same cache as the Pillow path, within JPEG rounding:
same manifest (sizes, unreadable files and their errors), pixels within a grey level on average."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from trainables.cache import read_metadata
from tuner.cli import main as tuner_main
from tuner.datasets.cache import build_cache
from tuner.datasets.cache_decode import FIT_FUNCTIONS
from tuner.datasets.cache_device import fit_on_device

from .loopback_server import cmyk_jpeg, exif_rotated_jpeg, gif, photo, png_rgba

CPU = torch.device("cpu")
MANIFEST = ["path", "width", "height", "ok", "error"]


def photo_tree(root):
    """root/train/<class>/: JPEGs of several sizes (the larger ones reduced by the draft at 32 px),
    progressive and grey ones, a rotated JPEG, PNG/GIF/CMYK (the CPU path's) and a broken file."""
    for index, (width, height) in enumerate([(96, 64), (150, 97), (61, 83), (300, 201), (64, 64),
                                             (257, 130), (40, 45), (129, 260)]):
        folder = root / "train" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        photo(width, height, index).save(folder / f"{index}.jpg", quality=90)
    odd = root / "train" / "a"
    photo(120, 90, 20).save(odd / "progressive.jpg", progressive=True)
    photo(77, 50, 21).convert("L").save(odd / "grey.jpg")
    (odd / "rotated.jpg").write_bytes(exif_rotated_jpeg(180, 70, seed=22))
    (odd / "alpha.png").write_bytes(png_rgba(50, 30, seed=23))
    (odd / "palette.gif").write_bytes(gif(40, 40, seed=24))
    (odd / "cmyk.jpg").write_bytes(cmyk_jpeg(60, 40, seed=25))
    (odd / "broken.jpg").write_bytes(b"<html>Image removed</html>")
    return root / "train"


def manifest_rows(manifest, root) -> list[dict]:
    rows = pq.read_table(manifest, columns=MANIFEST).to_pylist()
    for row in rows:  # an error message names the file: compare it without the tree's own root
        row["error"] = row["error"] and row["error"].replace(str(root), "ROOT")
    return rows


# Pillow's draft decodes at 1/2-1/8 scale with libjpeg's scaled IDCT, the device path averages the
# full decode's blocks: on these noisy synthetic photos that is ~0.5 grey level on average, a few
# at the 99th percentile (bench/gpu_decode.py measured 0.3 / 2 on real photos at 32 px). crop adds
# Pillow's half-pixel box offsets, which torchvision's whole-pixel crops approximate.
@pytest.mark.parametrize("fit, mean_limit, p99_limit", [("squash", 1.0, 8), ("pad", 1.0, 8),
                                                        ("crop", 2.0, 16)])
@pytest.mark.parametrize("size", [32, 64])
def test_device_build_matches_the_pillow_build(tmp_path, fit, mean_limit, p99_limit, size):
    pillow = build_cache(photo_tree(tmp_path / "cpu"), size=size, fit=fit, workers=1, progress=False)
    device = build_cache(photo_tree(tmp_path / "dev"), size=size, fit=fit, progress=False,
                         decode_device=CPU)
    assert (device.images, device.unreadable, device.decoded_on) == (pillow.images, 1, "cpu")
    assert read_metadata(device.manifest)["decoded_on"] == "cpu"
    rows = [manifest_rows(r.manifest, tmp_path / name) for r, name in ((pillow, "cpu"), (device, "dev"))]
    assert rows[0] == rows[1]  # same sizes (rotated: upright), same unreadable file, same error
    diff = np.abs(np.load(pillow.pixels).astype(int) - np.load(device.pixels).astype(int))
    assert diff.mean() < mean_limit and np.percentile(diff, 99) <= p99_limit


def test_crop_and_pad_geometry_follows_pillow(tmp_path):
    for width, height in [(91, 60), (60, 91), (80, 80), (100, 37)]:
        image = photo(width, height, width)
        tensor = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
        for fit in ("squash", "crop", "pad"):
            expected = np.asarray(FIT_FUNCTIONS[fit](image, 24)).transpose(2, 0, 1).astype(int)
            got = fit_on_device(tensor, 24, fit).numpy().astype(int)
            assert got.shape == expected.shape
            assert np.abs(got - expected).mean() < (1.5 if fit == "crop" else 0.5), (fit, width, height)
    with pytest.raises(ValueError, match="fit must be"):
        fit_on_device(tensor, 24, "stretch")


def test_the_command_refuses_a_gpu_it_does_not_have_and_auto_builds_on_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tree = photo_tree(tmp_path / "data")
    assert tuner_main(["data", "cache", str(tree), "--size", "16", "--decode-device", "cuda", "--quiet"]) == 2
    assert "--decode-device cuda: no CUDA device on this machine" in capsys.readouterr().err
    assert not (tree.parent / ".cache" / "train_16.parquet").exists()
    assert tuner_main(["data", "cache", str(tree), "--size", "16", "--workers", "1", "--quiet"]) == 0
    assert read_metadata(tree.parent / ".cache" / "train_16.parquet")["decoded_on"] == "cpu"
    with Image.open(tree / "a" / "rotated.jpg") as rotated:
        assert rotated.size == (180, 70)  # stored sideways; the manifest records it upright
