"""Decoding for ``tuner data cache``: one image -> uint8 ``[3, S, S]``, and one chunk of rows into
the memory-mapped file. Runs in spawned worker processes, so it imports only numpy and Pillow (a
worker that imported torch would spend seconds starting)."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps

from trainables.image_formats import decode_formats

__all__ = ["FIT_FUNCTIONS", "decode_resized", "decode_row", "decode_rows"]

_RESAMPLE = Image.Resampling.BILINEAR  # what torchvision's Resize uses (antialiased)
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ERROR_CHARS = 300  # an error message longer than this is cut in the manifest

# (row, ok, width, height, error): one decoded sample, as recorded in the progress journal.
Record = list


def decode_rows(pixels_path: str, rows: list[tuple[int, str]], size: int, fit: str) -> list[Record]:
    """Decode ``rows`` into the memory-mapped file; runs in a worker process. One record per row."""
    pixels = np.load(pixels_path, mmap_mode="r+")
    try:
        records = [decode_row(pixels, row, path, size, fit) for row, path in rows]
        pixels.flush()  # msync before the row is recorded as done
    finally:
        del pixels
    return records


def decode_row(pixels: np.ndarray, row: int, path: str, size: int, fit: str) -> Record:
    """Decode one image into ``pixels[row]``; its record (an unreadable image: zeros and the reason)."""
    try:
        chw, width, height = decode_resized(path, size, fit)
        pixels[row] = chw
        return [row, True, width, height, None]
    except Exception as err:  # any unreadable image is skipped and counted, never fatal
        pixels[row] = 0  # a resumed row may hold half an image from a killed worker
        reason = f"{type(err).__name__}: {err}"[:_ERROR_CHARS]
        return [row, False, None, None, reason]


def decode_resized(path: str, size: int, fit: str) -> tuple[np.ndarray, int, int]:
    """``(uint8 [3, size, size], original width, original height)`` of an upright RGB image.

    JPEGs are decoded at a reduced scale that still covers ``size`` (libjpeg's DCT scaling, 2-8x
    cheaper for large photos); other formats go through the trainable's own decoder.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path, formats=decode_formats()) as img:  # web photo formats only
            if img.format == "JPEG":
                width, height = img.size
                if img.getexif().get(0x0112, 1) in _ROTATED:
                    width, height = height, width
                img.draft("RGB", (size, size))
                rgb = ImageOps.exif_transpose(img).convert("RGB")
            else:
                rgb = None
    if rgb is None:
        from trainables.data import load_rgb_image  # 16-bit, palette, transparency, bombs

        rgb = load_rgb_image(path)
        width, height = rgb.size
    out = FIT_FUNCTIONS[fit](rgb, size)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1), width, height


FIT_FUNCTIONS = {
    "squash": lambda img, s: img.resize((s, s), _RESAMPLE),
    "crop": lambda img, s: ImageOps.fit(img, (s, s), _RESAMPLE),
    "pad": lambda img, s: ImageOps.pad(img, (s, s), _RESAMPLE, color=(0, 0, 0)),
}
