"""Batched JPEG decoding on a device: torchvision's ``decode_jpeg(list_of_bytes, device=...)``.

On CUDA this is nvjpeg, many files per call; on CPU the same list API runs libjpeg-turbo one file
after the other (what the tests exercise: the code path is the same, only the decoder differs).
``tuner data cache`` and ``tuner predict`` / ``evaluate`` use it when they decode on a GPU; their CPU
path (Pillow) is unchanged.

Only what that CPU path would decode as a plain JPEG goes to the device. Each file's header is
first opened by Pillow with the same allowlist (``decode_formats``) and the same decompression-bomb
guard as ``trainables.data.load_rgb_image``; a complete (ends with the EOI marker) JPEG in RGB/YCbCr
or grey is queued. Everything else comes back as ``None``, and the caller decodes it on its own CPU
path, which also says why a file is unreadable: PNG, WebP, GIF..., a CMYK JPEG, a truncated or
oversized file, and any JPEG the device's decoder refuses.

Pixels: on CPU, decode_jpeg and Pillow share libjpeg-turbo (equal to the bit); nvjpeg's IDCT and
chroma upsampling round differently (a few grey levels). decode_jpeg applies the EXIF orientation
on CPU only, so orientation is read from the header and applied here (``upright``), on every device.

``draft_size``: Pillow's ``draft`` (the cache builder's CPU path) lets libjpeg decode at 1/2, 1/4 or
1/8 scale, which changes the pixels noticeably at small sizes (a mean of ~3 grey levels at 32 px).
The same reduction is made here by average pooling of the full decode (an 8x8 DCT block decoded at
1/8 is its mean), so a cache built on a GPU matches one built on CPU (bench/gpu_decode.py measures
how closely). This module imports neither ray nor tuner.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from trainables.errors import TrialInputError
from trainables.image_formats import decode_formats

log = logging.getLogger(__name__)

# Files per decode_jpeg call: bounds device memory (64 phone photos of 12 MP: 2.3 GB decoded).
DEVICE_BATCH = 64
DEVICE_MODES = ("RGB", "L")  # Pillow's modes of the JPEGs nvjpeg decodes as RGB (not CMYK/YCCK)
ORIENTATION_TAG = 0x0112  # EXIF Orientation
JPEG_END = b"\xff\xd9"  # EOI: a file without it is truncated (Pillow refuses it; nvjpeg may not)
DRAFT_FACTORS = (8, 4, 2, 1)  # the scales libjpeg decodes at, as Pillow's JpegImageFile.draft tries them

# EXIF orientation -> the tensor op that makes the stored pixels upright: Pillow's exif_transpose
# table (FLIP_LEFT_RIGHT, ROTATE_180, FLIP_TOP_BOTTOM, TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90),
# on [C, H, W]. Any other value (1, or a corrupt 0 / 9) leaves the image as stored, as Pillow does.
_UPRIGHT = {
    2: lambda image: image.flip(-1),
    3: lambda image: image.flip(-2, -1),
    4: lambda image: image.flip(-2),
    5: lambda image: image.transpose(-2, -1),
    6: lambda image: image.rot90(-1, (-2, -1)),
    7: lambda image: image.transpose(-2, -1).flip(-2, -1),
    8: lambda image: image.rot90(1, (-2, -1)),
}


class DecodeDeviceError(TrialInputError):
    """``--decode-device`` names a device that is missing or cannot decode JPEGs; says which."""


class DeviceImage(NamedTuple):
    pixels: torch.Tensor  # uint8 [3, H, W] on the device, upright (reduced when draft_size was given)
    width: int  # the upright image's size before any reduction, as Pillow reports it
    height: int


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` [C, H, W] as stored, turned the way its EXIF ``orientation`` says to show it."""
    turn = _UPRIGHT.get(orientation)
    return image if turn is None else turn(image)


def draft_factor(width: int, height: int, size: int) -> int:
    """The reduction Pillow's ``draft(mode, (size, size))`` picks for a stored ``width x height`` JPEG:
    the largest of 8, 4, 2, 1 that keeps both sides at least ``size`` (1 for a smaller image)."""
    scale = min(width // size, height // size)
    return next((factor for factor in DRAFT_FACTORS if scale >= factor), 1)


def jpeg_orientation(data: bytes) -> Optional[int]:
    """The EXIF orientation of ``data`` when it is a JPEG the device may decode, else None."""
    if not data.rstrip(b"\0").endswith(JPEG_END):
        return None
    try:
        with warnings.catch_warnings():
            # As load_rgb_image: over Pillow's pixel limit is refused, not decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=decode_formats()) as img:
                if img.format != "JPEG" or img.mode not in DEVICE_MODES:
                    return None
                return int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # unidentified, a bomb, a corrupt header or EXIF: the CPU path says why
        return None


def decode_jpegs(paths: Sequence[str | Path], device: torch.device | str, *,
                 draft_size: Optional[int] = None) -> list[Optional[DeviceImage]]:
    """One ``DeviceImage`` per path that is a JPEG decodable on ``device``, ``None`` for every other
    path (see the module docstring: the caller decodes those on its CPU path).

    ``draft_size``: reduce as Pillow's ``draft("RGB", (draft_size, draft_size))`` would.
    """
    device = torch.device(device)
    out: list[Optional[DeviceImage]] = [None] * len(paths)
    queued = [(index, *read) for index, path in enumerate(paths)
              if (read := _read_jpeg(path)) is not None]
    for start in range(0, len(queued), DEVICE_BATCH):
        part = queued[start : start + DEVICE_BATCH]
        decoded = _decode_list([data for _, data, _ in part], device)
        for (index, _, orientation), image in zip(part, decoded):
            if image is not None:
                out[index] = _finish(image, orientation, draft_size)
    return out


def _read_jpeg(path: str | Path) -> Optional[tuple[torch.Tensor, int]]:
    """(the file's bytes as a uint8 CPU tensor, its orientation), or None: not for the device."""
    try:
        data = Path(path).read_bytes()
    except OSError:  # missing, unreadable: the caller's CPU path reports it
        return None
    orientation = jpeg_orientation(data)
    if orientation is None:
        return None
    # bytearray: a writable copy (torch warns on read-only buffers); the bytes are kilobytes.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation


def _decode_list(datas: list[torch.Tensor], device: torch.device) -> list[Optional[torch.Tensor]]:
    """decode_jpeg on the whole list; when it fails (one bad file fails the list, with no partial
    result) each file again alone, and None for those that fail alone."""
    try:
        return _decode_jpeg(datas, device)
    except RuntimeError:
        return [_decode_one(data, device) for data in datas]


def _decode_one(data: torch.Tensor, device: torch.device) -> Optional[torch.Tensor]:
    try:
        return _decode_jpeg([data], device)[0]
    except RuntimeError:  # corrupt, or a JPEG variant this decoder lacks: the CPU path decides
        return None


def _decode_jpeg(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # torchvision >= 0.29 announces TorchCodec as the successor; this API is what it has today.
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))


def _finish(image: torch.Tensor, orientation: int, draft_size: Optional[int]) -> DeviceImage:
    """Reduce as Pillow's draft would (before the orientation: draft sees the stored sides), then
    turn upright; the width and height are the upright full-size image's."""
    stored_height, stored_width = image.shape[-2:]
    if draft_size is not None:
        factor = draft_factor(stored_width, stored_height, draft_size)
        if factor > 1:
            # ceil_mode: a partial block at the right/bottom edge is averaged over its own pixels.
            pooled = F.avg_pool2d(image[None].float(), factor, ceil_mode=True)[0]
            image = pooled.round_().to(torch.uint8)
    image = upright(image, orientation)
    swapped = orientation in (5, 6, 7, 8)
    width, height = (stored_height, stored_width) if swapped else (stored_width, stored_height)
    return DeviceImage(image, int(width), int(height))


# --- which device -------------------------------------------------------------------------------
def resolve_decode_device(name: str) -> Optional[torch.device]:
    """``--decode-device``: ``cpu`` -> None (Pillow, the unchanged CPU path); ``auto`` -> the GPU when
    there is one and its decoder works, else None (a logged line says why when a GPU is there but
    cannot decode); ``cuda`` / ``cuda:N`` -> that device, or ``DecodeDeviceError`` when it is
    missing or cannot decode: asked for explicitly, a silent CPU fallback would hide the problem."""
    if name == "cpu":
        return None
    if name == "auto":
        return usable_gpu_decoder("cuda")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type != "cuda":
        raise DecodeDeviceError(f"--decode-device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    problem = _decoder_problem(str(device))
    if problem is not None:
        raise DecodeDeviceError(f"--decode-device {name}: {problem}; use --decode-device cpu")
    return device


def usable_gpu_decoder(name: str) -> Optional[torch.device]:
    """The CUDA device ``name`` when it decodes JPEGs, else None (logged when a GPU is there)."""
    if not torch.cuda.is_available():
        return None
    problem = _decoder_problem(name)
    if problem is None:
        return torch.device(name)
    log.warning("decoding JPEGs with Pillow on the CPU: %s", problem)
    return None


@functools.lru_cache(maxsize=None)
def _decoder_problem(name: str) -> Optional[str]:
    """Why ``decode_jpeg`` cannot decode on CUDA device ``name`` (None: it can): one tiny JPEG is
    decoded there once per process, so a torchvision built without nvjpeg is found up front."""
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} GPU(s)"
    probe = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(probe, format="JPEG")
    try:
        _decode_jpeg([torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8)], device)
    except RuntimeError as err:
        return f"torchvision's decode_jpeg cannot decode on {name} ({str(err).splitlines()[0]})"
    return None
