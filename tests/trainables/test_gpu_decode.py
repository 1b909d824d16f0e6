"""trainables.gpu_decode on CPU: decode_jpeg's list API with device="cpu" runs the same code path as
nvjpeg on CUDA, so the batched path itself is tested here against Pillow (the CPU path)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from trainables import gpu_decode
from trainables.data import load_rgb_image
from trainables.gpu_decode import (DecodeDeviceError, decode_jpegs, draft_factor, jpeg_orientation,
                                   resolve_decode_device, upright)

CPU = torch.device("cpu")


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients and noise: a JPEG of it decodes differently from a flat image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 100 * np.sin(x / 9 + seed), 128 + 90 * np.cos(y / 7), 255 * x / width], -1)
    noisy = base + rng.normal(0, 10, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def write(path: Path, image: Image.Image, fmt: str = "JPEG", **kwargs) -> Path:
    image.save(path, format=fmt, **kwargs)
    return path


def pillow_chw(path: Path) -> np.ndarray:
    return np.asarray(load_rgb_image(path)).transpose(2, 0, 1)


def test_jpegs_decode_to_pillows_pixels_exactly(tmp_path):
    paths = [write(tmp_path / "rgb.jpg", photo(64, 40)),
             write(tmp_path / "grey.jpg", photo(33, 21, 1).convert("L")),
             write(tmp_path / "progressive.jpg", photo(50, 70, 2), progressive=True),
             write(tmp_path / "subsampled.jpeg", photo(45, 31, 3), subsampling=2, quality=70)]
    decoded = decode_jpegs(paths, CPU)
    for path, image in zip(paths, decoded):
        assert image is not None, path.name
        assert image.pixels.dtype == torch.uint8 and image.pixels.device == CPU
        assert np.array_equal(image.pixels.numpy(), pillow_chw(path)), path.name
        assert (image.width, image.height) == load_rgb_image(path).size


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_upright_as_pillow_does(tmp_path, orientation):
    exif = Image.Exif()
    exif[gpu_decode.ORIENTATION_TAG] = orientation
    path = write(tmp_path / "turned.jpg", photo(48, 30, orientation), exif=exif)
    [image] = decode_jpegs([path], CPU)
    assert np.array_equal(image.pixels.numpy(), pillow_chw(path))
    assert (image.width, image.height) == load_rgb_image(path).size
    with Image.open(path) as stored:  # and the upright image is the stored one, turned
        assert ImageOps.exif_transpose(stored).size == (image.width, image.height)


def test_upright_leaves_unknown_orientations_alone():
    image = torch.arange(24, dtype=torch.uint8).view(2, 3, 4)
    assert upright(image, 0) is image and upright(image, 9) is image


def test_what_the_cpu_path_must_decide_is_left_to_it(tmp_path, monkeypatch):
    jpeg = write(tmp_path / "ok.jpg", photo(40, 30))
    data = jpeg.read_bytes()
    others = {
        "png": write(tmp_path / "a.png", photo(20, 20), "PNG"),
        "gif": write(tmp_path / "a.gif", photo(20, 20).convert("P"), "GIF"),
        "webp": write(tmp_path / "a.webp", photo(20, 20), "WEBP"),
        "cmyk": write(tmp_path / "cmyk.jpg", photo(20, 20).convert("CMYK")),
        "truncated": tmp_path / "cut.jpg",
        "html": tmp_path / "page.jpg",
        "missing": tmp_path / "gone.jpg",
        "eps": tmp_path / "fake.jpg",
    }
    others["truncated"].write_bytes(data[: len(data) // 2])
    others["html"].write_bytes(b"<html>Image removed</html>")
    others["eps"].write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    decoded = decode_jpegs([jpeg, *others.values()], CPU)
    assert decoded[0] is not None
    assert dict(zip(others, decoded[1:])) == dict.fromkeys(others)
    assert jpeg_orientation(data + b"\0\0") == 1  # zero padding after the end marker is fine
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 - 1)  # the bomb guard, as load_rgb_image's
    assert decode_jpegs([jpeg], CPU) == [None]


def test_one_file_the_decoder_refuses_costs_only_that_file(tmp_path, monkeypatch):
    paths = [write(tmp_path / f"{i}.jpg", photo(30, 20, i)) for i in range(3)]
    poisoned = paths[1].read_bytes()
    real = gpu_decode.decode_jpeg

    def refusing(datas, **kwargs):  # nvjpeg fails the whole list for one bad file, like this
        if any(bytes(d.numpy()) == poisoned for d in datas):
            raise RuntimeError("Error while decoding JPEG images")
        return real(datas, **kwargs)

    monkeypatch.setattr(gpu_decode, "decode_jpeg", refusing)
    decoded = decode_jpegs(paths, CPU)
    assert decoded[1] is None
    assert all(np.array_equal(decoded[i].pixels.numpy(), pillow_chw(paths[i])) for i in (0, 2))


@pytest.mark.parametrize("side", [8, 16, 32, 64, 100, 200])
def test_draft_factor_is_pillows(tmp_path, side):
    path = write(tmp_path / "big.jpg", photo(515, 290))
    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        factor = draft_factor(515, 290, side)
        assert img.size == (-(-515 // factor), -(-290 // factor))


def test_draft_size_reduces_as_pillows_draft_does(tmp_path):
    path = write(tmp_path / "big.jpg", photo(515, 290), quality=92)
    [image] = decode_jpegs([path], CPU, draft_size=32)
    with Image.open(path) as img:
        img.draft("RGB", (32, 32))
        drafted = np.asarray(img.convert("RGB")).transpose(2, 0, 1).astype(int)
    assert image.pixels.shape == drafted.shape == (3, 37, 65)  # 1/8: ceil(515 / 8) x ceil(290 / 8)
    diff = np.abs(image.pixels.numpy().astype(int) - drafted)
    assert diff.mean() < 2.0  # a block's mean vs libjpeg's scaled IDCT: rounding, not a shift
    assert (image.width, image.height) == (515, 290)  # the full-size image's, as Pillow reports


def test_decode_device_flag(monkeypatch, caplog):
    gpu_decode._decoder_problem.cache_clear()
    assert resolve_decode_device("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_decode_device("auto") is None  # no GPU: Pillow, nothing to say
    with pytest.raises(DecodeDeviceError, match="cuda: no CUDA device on this machine"):
        resolve_decode_device("cuda")
    for bad in ("mps", "gpu", "cuda:x"):
        with pytest.raises(DecodeDeviceError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_decode_device(bad)


def test_a_gpu_whose_decoder_fails_is_refused_or_skipped_with_a_line(monkeypatch, caplog):
    gpu_decode._decoder_problem.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def no_nvjpeg(datas, **kwargs):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(gpu_decode, "decode_jpeg", no_nvjpeg)
    with caplog.at_level(logging.WARNING, logger="trainables.gpu_decode"):
        assert resolve_decode_device("auto") is None
    assert "decoding JPEGs with Pillow on the CPU" in caplog.text and "nvJPEG" in caplog.text
    with pytest.raises(DecodeDeviceError, match="cannot decode on cuda.*nvJPEG"):
        resolve_decode_device("cuda")
    with pytest.raises(DecodeDeviceError, match="has 1 GPU"):
        resolve_decode_device("cuda:3")
    gpu_decode._decoder_problem.cache_clear()


def test_bytes_in_memory_decode_as_files_do():
    buffer = io.BytesIO()
    photo(20, 10).save(buffer, format="JPEG")
    assert jpeg_orientation(buffer.getvalue()) == 1
    assert jpeg_orientation(b"\xff\xd8 not really \xff\xd9") is None
