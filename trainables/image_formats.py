"""Which image formats Pillow may parse (shared by the downloader, the loaders, the cache and stats).

Its own module, importing nothing but Pillow, so that tuner's stats and cache workers can use it
without importing torch (``trainables.image_files`` pulls in torchvision).
"""

from __future__ import annotations

from PIL import Image

__all__ = ["DECODE_FORMATS", "decode_formats", "over_pixel_limit"]

# Web photo formats only, whatever a file's name says. Pillow can also parse EPS (through
# Ghostscript), PSD, ICO, FITS and dozens more, none of which a product photo needs, all of which
# widen the attack surface for untrusted files.
DECODE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

# Pillow's own default for Image.MAX_IMAGE_PIXELS (~89 MP); used if someone set it to None.
DEFAULT_MAX_PIXELS = 89_478_485


def decode_formats() -> list[str]:
    """DECODE_FORMATS that this Pillow build can open (AVIF is optional), for ``Image.open(formats=)``.

    Any other file raises ``UnidentifiedImageError`` at open, before a byte is decoded.
    """
    Image.init()
    return [name for name in DECODE_FORMATS if name in Image.OPEN]


def over_pixel_limit(img: Image.Image) -> str | None:
    """Why ``img`` (opened, not yet loaded: the size comes from the header) is too big, or None.

    Pillow only warns between its limit and twice it (89-179 MP); a decode there costs gigabytes.
    """
    limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    width, height = img.size
    if width * height > limit:
        return f"{width}x{height} exceeds {limit} pixels"
    return None
