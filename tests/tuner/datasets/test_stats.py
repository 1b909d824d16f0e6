"""channel_stats against a direct NumPy computation on the same resized images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuner.datasets.stats import (
    channel_stats,
    default_stats_path,
    list_image_folder,
    load_stats,
    save_stats,
)

from .loopback_server import photo


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/ with JPEG, PNG (RGBA, L), GIF and one corrupt file."""
    root = tmp_path_factory.mktemp("data") / "train"
    for c in range(3):
        (root / str(c)).mkdir(parents=True)
        for i in range(9):
            seed = 10 * c + i
            img = photo(40 + 7 * i, 30 + 5 * c, seed)
            kind = i % 4
            if kind == 0:
                img.save(root / str(c) / f"{seed}.jpg", quality=90)
            elif kind == 1:
                img.convert("RGBA").save(root / str(c) / f"{seed}.png")
            elif kind == 2:
                img.convert("L").save(root / str(c) / f"{seed}.PNG")
            else:
                img.convert("P", palette=Image.Palette.ADAPTIVE).save(root / str(c) / f"{seed}.gif")
    (root / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "1" / "notes.txt").write_text("ignored: not an image extension")
    (root / "2" / "99.jpg.part").write_bytes(b"ignored: partial download")
    (root / "stray.jpg").write_bytes(b"ignored: not in a class folder")
    return root


def numpy_reference(root: Path, resize: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    arrays = []
    for _, path in list_image_folder(root):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except OSError:
            continue
        if resize is not None:
            rgb = rgb.resize((resize, resize), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0)
    pixels = np.concatenate(arrays)
    return pixels.mean(axis=0), pixels.std(axis=0), len(arrays)


@pytest.mark.parametrize(
    ("resize", "workers", "chunk_size"), [(16, 2, 5), (16, 1, 128), (None, 1, 4)]
)
def test_matches_numpy(image_tree: Path, resize: int | None, workers: int, chunk_size: int) -> None:
    stats = channel_stats(
        image_tree, resize=resize, workers=workers, progress=False, chunk_size=chunk_size
    )
    mean, std, count = numpy_reference(image_tree, resize)
    assert np.allclose(stats["mean"], mean, atol=1e-6, rtol=0)
    assert np.allclose(stats["std"], std, atol=1e-6, rtol=0)
    assert (stats["count"], stats["skipped"], stats["resize"]) == (count, 1, resize)
    assert count == 27


def test_worker_count_does_not_change_result(image_tree: Path) -> None:
    """Integer sums combine exactly, whatever the chunking."""
    one = channel_stats(image_tree, resize=8, workers=1, progress=True, chunk_size=3)
    two = channel_stats(image_tree, resize=8, workers=2, progress=False, chunk_size=7)
    assert one == two


def test_empty_or_missing_tree(tmp_path: Path) -> None:
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable image"):
        channel_stats(tmp_path, progress=False)
    with pytest.raises(FileNotFoundError):
        channel_stats(tmp_path / "missing", progress=False)
    with pytest.raises(ValueError):
        channel_stats(tmp_path, resize=0, progress=False)


def test_save_and_load(tmp_path: Path) -> None:
    train = tmp_path / "data" / "train"
    path = default_stats_path(train)
    assert path == (tmp_path / "data" / "stats.json").resolve()
    stats = {
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.2, 0.25],
        "count": 12,
        "skipped": 0,
        "resize": 64,
    }
    assert save_stats(stats, path) == path
    assert load_stats(path) == stats
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "bad",
    [
        {"mean": [0.5, 0.4], "std": [0.2, 0.2, 0.2], "count": 1},
        {"mean": [0.5, 0.4, "x"], "std": [0.2, 0.2, 0.2], "count": 1},
        {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, float("nan")], "count": 1},
        {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "count": 0},
        [1, 2, 3],
    ],
)
def test_invalid_stats_rejected(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError):
        save_stats(bad, tmp_path / "s.json")  # type: ignore[arg-type]
    (tmp_path / "raw.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        load_stats(tmp_path / "raw.json")


def test_load_stats_not_json(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_stats(tmp_path / "s.json")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # from the header read
def test_images_over_the_pixel_limit_are_skipped_without_decoding(tmp_path: Path) -> None:
    """100 MP sits in Pillow's warning range (89-179 MP): stats must not decode it."""
    from .loopback_server import bomb_png

    root = tmp_path / "train"
    (root / "a").mkdir(parents=True)
    photo(20, 10, 1).save(root / "a" / "ok.jpg")
    (root / "a" / "bomb.png").write_bytes(bomb_png(10_000))
    stats = channel_stats(root, resize=8, workers=1, progress=False)
    assert (stats["count"], stats["skipped"]) == (1, 1)


def test_stats_skips_formats_outside_the_allowlist(tmp_path: Path) -> None:
    root = tmp_path / "train"
    (root / "a").mkdir(parents=True)
    photo(20, 10, 1).save(root / "a" / "ok.jpg")
    photo(20, 10, 2).save(root / "a" / "tga.jpg", format="TGA")
    stats = channel_stats(root, resize=8, workers=1, progress=False)
    assert (stats["count"], stats["skipped"]) == (1, 1)
