"""Image folders for the last mile: test folders (``<id>.<ext>``), labelled folders, batched decoding.

A labelled set is either an ImageFolder (``VAL/<class>/<file>``, what searches validate on) or a
flat test folder with an answer key (``--key labels.csv``, columns ``id,label``: the shipped
sample's ``test_labels.csv``). Decoding happens once per image per batch; every model of an
ensemble cuts its own views from the decoded image, and a batch bounds the memory.

Decoding is Pillow's (``load_rgb_image``), or, with a ``device`` (``--decode-device``; by default the
model's GPU), the batch's JPEGs in one ``decode_jpeg`` call there (``trainables.gpu_decode``): the
images are then uint8 ``[3, H, W]`` tensors on that device, the other files decoded by Pillow and
moved there too. The members' eval transforms take either (torchvision v2 ``ToImage``); the tensor
resize matches Pillow's within one grey level.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from trainables import csvsafe
from trainables.data import load_rgb_image
from trainables.gpu_decode import decode_jpegs
from trainables.image_files import IMAGE_EXTENSIONS
from tuner.errors import UserError

log = logging.getLogger(__name__)


def _id_order(item: tuple[str, Path]) -> tuple:
    # Numeric ids sort numerically (Kaggle's order), other names alphabetically after them. Numeric
    # means ASCII digits: str.isdigit() also accepts "²" (which int() refuses: `².jpg` crashed the
    # sort) and "٣" (which int() reads as 3: an id Kaggle would not); those sort as names.
    image_id = item[0]
    numeric = image_id.isascii() and image_id.isdigit()
    return (not numeric, int(image_id) if numeric else 0, image_id)


def list_test_images(images_dir: Path) -> list[tuple[str, Path]]:
    if not images_dir.is_dir():
        raise UserError(f"--images: {images_dir}: test image folder does not exist")
    files = [p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise UserError(f"--images: {images_dir}: test image folder is empty")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise UserError(f"--images: {images_dir}: id {path.stem!r} twice "
                            f"({seen[path.stem].name} and {path.name}); ids come from file names")
        seen[path.stem] = path
    return sorted(seen.items(), key=_id_order)


def labelled_images(images_dir: Path, key: Optional[Path] = None) -> list[tuple[Path, str]]:
    """(file, class name) for every image of a labelled set, in a stable order."""
    if key is not None:
        return _keyed_images(images_dir, key)
    if not images_dir.is_dir():
        raise UserError(f"--images: {images_dir}: folder does not exist")
    classes = sorted(d for d in images_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"--images: {images_dir}: no class folders (expected {images_dir}/<class>/<image>; "
                        "for a flat folder of <id>.<ext> files give its answer key with --key)")
    items = [(path, folder.name) for folder in classes for path in sorted(folder.iterdir())
             if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise UserError(f"--images: {images_dir}: its class folders hold no images")
    return items


def _keyed_images(images_dir: Path, key: Path) -> list[tuple[Path, str]]:
    try:
        with open(key, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise UserError(f"--key: {key}: {err.strerror or err}") from None
    if not rows or not {"id", "label"} <= set(rows[0]):
        raise UserError(f"--key: {key}: expected the columns id,label")
    truth = {csvsafe.unescape(r["id"]): csvsafe.unescape(r["label"]) for r in rows}
    images = list_test_images(images_dir)
    unlabelled = [image_id for image_id, _ in images if image_id not in truth]
    if unlabelled:
        raise UserError(f"--key: {key}: no label for {len(unlabelled)} image(s) of {images_dir}, "
                        f"e.g. id {unlabelled[0]!r}")
    return [(path, truth[image_id]) for image_id, path in images]


def class_indices(labels: Sequence[str], class_names: Sequence[str], where: str) -> list[int]:
    """Labels as the model's class indices; a label the model does not know is an error naming it."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise UserError(f"{where}: class(es) {', '.join(map(repr, unknown[:5]))} are not classes of the "
                        f"model (it knows {len(class_names)}: {', '.join(list(class_names)[:5])}, …)")
    return [index[label] for label in labels]


Decoded = Union[Image.Image, torch.Tensor]  # a PIL image, or uint8 [3, H, W] on the decode device


def decoded_batches(paths: Sequence[Path], batch_size: int, device: Optional[torch.device] = None
                    ) -> Iterator[tuple[list[int], list[Decoded], list[int]]]:
    """(positions decoded, images, positions skipped) per batch of ``paths``. A file that is not a
    readable image is skipped and logged, never fatal. ``device``: see the module docstring."""
    if batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {batch_size}")
    for start in range(0, len(paths), batch_size):
        batch = range(start, min(start + batch_size, len(paths)))
        on_device = (decode_jpegs([paths[p] for p in batch], device) if device is not None
                     else [None] * len(batch))
        positions, images, skipped = [], [], []
        for position, decoded in zip(batch, on_device):
            image = decoded.pixels if decoded is not None else _pillow_image(paths[position], device)
            if image is None:
                skipped.append(position)
            else:
                images.append(image)
                positions.append(position)
        yield positions, images, skipped


def _pillow_image(path: Path, device: Optional[torch.device]) -> Optional[Decoded]:
    """The CPU path: Pillow's upright RGB image (as a uint8 tensor on ``device`` when there is one),
    or None when the file is no readable image (logged)."""
    try:
        image = load_rgb_image(path)
    except Exception as err:  # not an image, truncated, a bomb: counted, named, not fatal
        log.info("skipping %s (%s: %s)", Path(path).name, type(err).__name__, err)
        return None
    return image if device is None else pil_to_tensor(image).to(device)
