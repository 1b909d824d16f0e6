"""Reader and validator for the iMaterialist competition JSON files.

The files look like::

    {"images": [{"url": ["http://..."], "image_id": 1}, ...],
     "annotations": [{"image_id": 1, "label_id": 38}, ...]}

``train.json`` and ``validation.json`` carry ``annotations``; ``test.json``
does not. The files are downloaded from the internet and later drive file
names and HTTP requests, so everything is validated strictly here, once:
image ids must be real positive integers (an id becomes a file name, so a
string such as ``"../x"`` must never get through), labels non-negative
integers, and URLs plain http(s). An id of 2**63 or more (a 300-digit one
would exceed the file-name length limit) skips that image only.

Structural problems raise :class:`CompetitionDataError` with a one-line
message naming the file, the offending key/index and the rule. Problems that
only affect one image (no URL, unsupported URL scheme, id too large) are not fatal: the
image is recorded in :attr:`CompetitionIndex.skipped` with a reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CompetitionDataError",
    "CompetitionIndex",
    "Item",
    "load_competition_json",
    "parse_competition",
]

_ALLOWED_SCHEMES = ("http", "https")
# An id becomes a file name: a 300-digit one exceeds NAME_MAX and used to abort the whole
# download (ENAMETOOLONG). 2**63 bounds it to 19 digits and keeps it a signed 64-bit int.
MAX_IMAGE_ID = 2**63
_REPR_LIMIT = 60


class CompetitionDataError(ValueError):
    """The competition JSON is malformed; the message is a single line."""


@dataclass(frozen=True)
class Item:
    """One downloadable image: its id, candidate URLs (tried in order) and label."""

    image_id: int
    urls: tuple[str, ...]
    label: int | None = None


@dataclass
class CompetitionIndex:
    """Validated content of one competition JSON file."""

    items: list[Item] = field(default_factory=list)
    #: ``(image_id, reason)`` for images that cannot be downloaded at all.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: Human-readable, aggregated (one line per kind of issue) warnings.
    warnings: list[str] = field(default_factory=list)
    source: str = "<memory>"

    @property
    def labelled(self) -> bool:
        """True when at least one item carries a label."""
        return any(item.label is not None for item in self.items)


def _short(value: Any) -> str:
    """repr() of a value, cut so that error messages stay on one short line."""
    try:
        text = repr(value).replace("\n", "\\n")
    except ValueError:  # int too large to print (sys.get_int_max_str_digits)
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python; JSON true/false is never an id.
    return isinstance(value, int) and not isinstance(value, bool)


def load_competition_json(path: str | os.PathLike[str]) -> CompetitionIndex:
    """Read and validate a competition JSON file.

    Args:
        path: ``train.json`` / ``validation.json`` / ``test.json``.

    Returns:
        A :class:`CompetitionIndex`; ``items`` keeps the file's order.

    Raises:
        CompetitionDataError: unreadable file, invalid JSON (with line and
            column) or any structural rule broken (see module docstring).
    """
    path = Path(path)
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CompetitionDataError(f"{name}: cannot read file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CompetitionDataError(f"{name}: not UTF-8 text at byte {exc.start}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompetitionDataError(
            f"{name}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except RecursionError as exc:
        raise CompetitionDataError(f"{name}: not valid JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. integers longer than sys.get_int_max_str_digits()
        raise CompetitionDataError(f"{name}: not valid JSON: {exc}") from exc
    return parse_competition(data, source=name)


def parse_competition(data: Any, *, source: str = "<memory>") -> CompetitionIndex:
    """Validate already-decoded JSON (see :func:`load_competition_json`)."""
    if not isinstance(data, dict):
        raise CompetitionDataError(
            f"{source}: top level must be a JSON object, got {type(data).__name__}"
        )
    if "images" not in data:
        raise CompetitionDataError(f"{source}: missing required key 'images'")
    images = data["images"]
    if not isinstance(images, list):
        raise CompetitionDataError(f"{source}: images: must be a list, got {type(images).__name__}")

    index = CompetitionIndex(source=source)
    urls_by_id: dict[int, tuple[str, ...]] = {}
    position: dict[int, int] = {}
    counters = {"string_url": 0, "dropped_urls": 0}
    for i, entry in enumerate(images):
        image_id, urls = _parse_image(entry, f"{source}: images[{i}]", counters)
        if image_id in position:
            raise CompetitionDataError(
                f"{source}: images[{i}].image_id: duplicate id {image_id} "
                f"(first seen at images[{position[image_id]}])"
            )
        position[image_id] = i
        urls_by_id[image_id] = urls

    labels = _parse_annotations(data, source, position, index)

    for image_id, urls in urls_by_id.items():
        if isinstance(urls, str):  # a skip reason, not a URL tuple
            index.skipped.append((image_id, urls))
        else:
            index.items.append(Item(image_id=image_id, urls=urls, label=labels.get(image_id)))

    if index.skipped:
        index.warnings.append(
            f"{source}: {len(index.skipped)} image(s) skipped: no usable http(s) URL "
            f"or image_id not below 2**63"
        )
    if counters["string_url"]:
        index.warnings.append(
            f"{source}: {counters['string_url']} image(s) had 'url' as a plain string "
            "instead of a list; accepted"
        )
    if counters["dropped_urls"]:
        index.warnings.append(
            f"{source}: {counters['dropped_urls']} non-http(s) URL(s) ignored in images "
            "that still have another usable URL"
        )
    if labels and len(labels) < len(position):
        index.warnings.append(
            f"{source}: {len(position) - len(labels)} image(s) have no annotation; kept unlabelled"
        )
    return index


def _parse_image(entry: Any, where: str, counters: dict[str, int]) -> tuple[int, Any]:
    """Return ``(image_id, urls)``; ``urls`` is a tuple, or a str skip reason."""
    if not isinstance(entry, dict):
        raise CompetitionDataError(f"{where}: must be an object, got {type(entry).__name__}")
    if "image_id" not in entry:
        raise CompetitionDataError(f"{where}: missing required key 'image_id'")
    image_id = entry["image_id"]
    if not _is_int(image_id) or image_id <= 0:
        raise CompetitionDataError(
            f"{where}.image_id: must be a positive integer, got {_short(image_id)}"
        )
    if "url" not in entry:
        raise CompetitionDataError(f"{where}: missing required key 'url'")
    if image_id >= MAX_IMAGE_ID:
        # Kept in the index as a skip so that its annotations still resolve.
        return image_id, f"image_id {_short(image_id)} out of range: must be below 2**63"
    raw_urls = entry["url"]
    if isinstance(raw_urls, str):
        counters["string_url"] += 1
        raw_urls = [raw_urls]
    if not isinstance(raw_urls, list):
        raise CompetitionDataError(
            f"{where}.url: must be a list of strings, got {type(raw_urls).__name__}"
        )
    if not raw_urls:
        return image_id, "no URL"

    good: list[str] = []
    reasons: list[str] = []
    for j, url in enumerate(raw_urls):
        if not isinstance(url, str):
            raise CompetitionDataError(
                f"{where}.url[{j}]: must be a string, got {type(url).__name__}"
            )
        problem = _url_problem(url)
        if problem is None:
            good.append(url.strip())
        else:
            reasons.append(problem)
    if not good:
        return image_id, reasons[0]
    counters["dropped_urls"] += len(reasons)
    return image_id, tuple(good)


def _url_problem(url: str) -> str | None:
    """None when ``url`` is a usable http(s) URL, else a short reason."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return f"malformed URL {_short(url)}"
    if parts.scheme.lower() not in _ALLOWED_SCHEMES:
        scheme = parts.scheme or "(none)"
        return f"unsupported URL scheme {scheme!r}"
    if not host:
        return f"URL without host {_short(url)}"
    return None


def _parse_annotations(
    data: dict[str, Any], source: str, position: dict[int, int], index: CompetitionIndex
) -> dict[int, int]:
    """Map image id -> label id; an absent ``annotations`` key means unlabelled."""
    annotations = data.get("annotations")
    if annotations is None:
        return {}
    if not isinstance(annotations, list):
        raise CompetitionDataError(
            f"{source}: annotations: must be a list, got {type(annotations).__name__}"
        )
    labels: dict[int, int] = {}
    repeated = 0
    for k, ann in enumerate(annotations):
        where = f"{source}: annotations[{k}]"
        if not isinstance(ann, dict):
            raise CompetitionDataError(f"{where}: must be an object, got {type(ann).__name__}")
        for key in ("image_id", "label_id"):
            if key not in ann:
                raise CompetitionDataError(f"{where}: missing required key {key!r}")
        image_id, label = ann["image_id"], ann["label_id"]
        if not _is_int(image_id) or image_id <= 0:
            raise CompetitionDataError(
                f"{where}.image_id: must be a positive integer, got {_short(image_id)}"
            )
        if not _is_int(label) or label < 0:
            raise CompetitionDataError(
                f"{where}.label_id: must be a non-negative integer, got {_short(label)}"
            )
        if image_id not in position:
            raise CompetitionDataError(
                f"{where}.image_id: refers to unknown image {image_id} (not in 'images')"
            )
        if image_id in labels:
            if labels[image_id] != label:
                raise CompetitionDataError(
                    f"{where}.label_id: image {image_id} already labelled "
                    f"{labels[image_id]}, got conflicting {label}"
                )
            repeated += 1
        labels[image_id] = label
    if repeated:
        index.warnings.append(f"{source}: {repeated} repeated identical annotation(s) ignored")
    return labels
