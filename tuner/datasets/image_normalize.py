"""Turn untrusted downloaded bytes into a clean RGB JPEG file, or say why not.

Split from :mod:`tuner.datasets.download` (which keeps the run itself: lock,
thread pool, resume, failure CSV) so that each module stays small; this one
is the only place where downloaded bytes reach Pillow. Only web photo formats
are opened, the decompression-bomb limit always applies, and every failure
is a :class:`~tuner.datasets.fetch.FetchError` with an image reason
(``not_an_image``, ``decompression_bomb``, ``truncated``, ``corrupt_image``,
``write_error``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from trainables.image_formats import DECODE_FORMATS, decode_formats
from tuner.datasets.fetch import FetchError
from tuner.datasets.safe_files import open_new

__all__ = ["ALLOWED_FORMATS", "JPEG_QUALITY", "save_image"]

JPEG_QUALITY = 90
# Pillow's own default for Image.MAX_IMAGE_PIXELS; used if someone set it to None.
DEFAULT_MAX_PIXELS = 89_478_485
# Web photo formats only (shared with the trainables' decoders, see there why).
ALLOWED_FORMATS = DECODE_FORMATS


def save_image(data: bytes, dest: Path, max_side: int | None) -> None:
    """Decode, normalise and atomically write ``dest`` (via ``<name>.part``)."""
    img = _decode(data, max_side)
    part = dest.with_name(dest.name + ".part")
    try:
        with open_new(part, "wb") as fh:  # a symlink planted at .part is removed, not followed
            img.save(fh, format="JPEG", quality=JPEG_QUALITY)
        os.replace(part, dest)
    except BaseException as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # disk full, permissions...
            raise FetchError("write_error", f"{dest}: {exc}") from exc
        raise


def _decode(data: bytes, max_side: int | None) -> Image.Image:
    """Return an RGB image, or raise :class:`FetchError` with an image reason."""
    try:
        formats = decode_formats()
        with Image.open(io.BytesIO(data), formats=formats) as probe:
            _check_pixels(probe)
            probe.verify()  # structural checks (PNG CRCs...) before a full decode
        source = Image.open(io.BytesIO(data), formats=formats)
        _check_pixels(source)
        if max_side is not None:
            source.draft("RGB", (max_side, max_side))  # JPEG: cheap DCT-domain downscale
        source.load()
        img = _to_rgb(ImageOps.exif_transpose(source))
        if max_side is not None and max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return img
    except FetchError:
        raise
    except Image.DecompressionBombError as exc:
        raise FetchError("decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        detail = f"Pillow cannot identify the data ({len(data)} bytes)"
        raise FetchError("not_an_image", detail) from exc
    except Exception as exc:  # Pillow raises many types on malformed data
        text = f"{type(exc).__name__}: {exc}"
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt_image"
        raise FetchError(reason, text) from exc


def _check_pixels(img: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    width, height = img.size
    if width * height > limit:
        raise FetchError("decompression_bomb", f"{width}x{height} exceeds {limit} pixels")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy; transparent areas become white (product photos on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")
