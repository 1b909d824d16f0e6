"""build_cache on real image files: layout, pixels, unreadable images, idempotence, staleness,
resume after an interruption and the build lock. The parallel decoder (worker processes) is
exercised by the CLI test, which compares its output with a serial build."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from filelock import FileLock
from PIL import Image

from trainables.cache import CacheError, CachedImageDataset, cache_paths, find_cache, read_metadata
from trainables.data import RobustImageFolder, load_rgb_image
from tuner.datasets.cache import build_cache, build_caches, find_image_folders
from tuner.datasets.cache_decode import decode_resized

from .loopback_server import exif_rotated_jpeg, photo, png_rgba

QUIET = {"workers": 1, "progress": False}


def make_data(root: Path, demo_data: Path, per_class: int = 12) -> Path:
    """root/train/<class>/: shipped JPEGs plus a rotated JPEG, an RGBA PNG and a broken file."""
    for class_dir in sorted((demo_data / "train").iterdir())[:4]:
        target = root / "train" / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(path, target / path.name)
    odd = root / "train" / "airplane"
    (odd / "rotated.jpg").write_bytes(exif_rotated_jpeg(90, 40, seed=1))  # stored 90x40, shown 40x90
    (odd / "alpha.png").write_bytes(png_rgba(50, 30, seed=2))
    (odd / "broken.jpg").write_bytes(b"<html>Image removed</html>")
    (root / "test").mkdir()  # flat, unlabelled: not an ImageFolder tree
    photo(20, 20, 3).save(root / "test" / "1.jpg")
    return root


@pytest.fixture
def data(tmp_path: Path, demo_data: Path) -> Path:
    return make_data(tmp_path / "data", demo_data)


def test_layout_manifest_and_pixels(data: Path) -> None:
    [result] = build_caches(data, size=32, **QUIET)
    paths = cache_paths(data / "train", 32)
    assert (result.pixels, result.manifest) == (paths.pixels, paths.manifest)
    assert paths.pixels == data / ".cache" / "train_32.npy"
    assert (result.images, result.unreadable, result.built) == (51, 1, True)
    assert not list(paths.directory.glob("*.partial")) and not list(paths.directory.glob("*.jsonl"))

    table = pq.read_table(paths.manifest).to_pylist()
    folder = RobustImageFolder(data / "train")
    assert [row["path"] for row in table] == [os.path.relpath(p, data / "train") for p, _ in folder.samples]
    assert [row["target"] for row in table] == folder.targets
    assert {row["split"] for row in table} == {"train"}
    rows = {row["id"]: row for row in table}
    assert (rows["rotated"]["width"], rows["rotated"]["height"]) == (40, 90)  # upright size
    assert (rows["alpha"]["width"], rows["alpha"]["height"], rows["alpha"]["label"]) == (50, 30, "airplane")
    assert rows["broken"]["ok"] is False and "UnidentifiedImageError" in rows["broken"]["error"]
    assert rows["broken"]["width"] is None
    meta = read_metadata(paths.manifest)
    assert meta["classes"] == folder.classes and meta["shape"] == [51, 3, 32, 32]

    pixels = np.load(paths.pixels, mmap_mode="r")
    for row in table:
        if row["ok"]:
            expected = load_rgb_image(data / "train" / row["path"]).resize((32, 32), Image.BILINEAR)
            diff = np.abs(pixels[row["index"]].astype(int) - np.asarray(expected).transpose(2, 0, 1))
            assert diff.max() <= (0 if row["width"] == 32 else 40) and diff.mean() < 3, row["id"]
    assert not pixels[rows["broken"]["index"]].any()


def test_fits_keep_the_geometry_they_promise(tmp_path: Path) -> None:
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :15] = (255, 0, 0)  # a red band on the left, the rest blue
    wide[:, 15:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    squash, w, h = decode_resized(str(path), 16, "squash")
    crop, _, _ = decode_resized(str(path), 16, "crop")
    pad, _, _ = decode_resized(str(path), 16, "pad")
    assert (w, h) == (80, 40)
    assert squash[0, 8, 1] == 255 and squash[2, 8, 14] == 255  # the whole image, squeezed
    assert crop[0].max() == 0  # the centre square holds no red
    assert not pad[:, :3].any() and not pad[:, -3:].any() and pad[0, 8, 1] == 255  # black bands


def test_up_to_date_cache_is_left_alone_and_changes_make_it_stale(data: Path) -> None:
    first = build_cache(data / "train", size=32, **QUIET)
    inode = os.stat(first.pixels).st_ino
    again = build_cache(data / "train", size=32, **QUIET)
    assert not again.built and os.stat(first.pixels).st_ino == inode
    assert find_cache(str(data / "train"), 32) == first.manifest

    shutil.copy2(data / "train" / "airplane" / "alpha.png", data / "train" / "cat_new.png")  # ignored
    shutil.copy2(data / "train" / "airplane" / "alpha.png", data / "train" / "airplane" / "new.png")
    assert find_cache(str(data / "train"), 32) is None  # stale: a reader falls back to the files
    rebuilt = build_cache(data / "train", size=32, **QUIET)
    assert rebuilt.built and rebuilt.images == first.images + 1
    assert find_cache(str(data / "train"), 32) == first.manifest
    assert build_cache(data / "train", size=32, force=True, **QUIET).built
    other_fit = build_cache(data / "train", size=32, fit="crop", **QUIET)
    assert other_fit.built and read_metadata(other_fit.manifest)["fit"] == "crop"


def test_a_copied_data_root_keeps_a_valid_cache(data: Path, tmp_path: Path) -> None:
    build_cache(data / "train", size=32, **QUIET)
    moved = tmp_path / "node-local" / "data"
    shutil.copytree(data, moved)  # copy2 + copystat: the mtimes travel, the images are the same
    manifest = find_cache(str(moved / "train"), 32)
    assert manifest == cache_paths(moved / "train", 32).manifest
    assert all(p.startswith(str(moved / "train")) for p in CachedImageDataset(manifest).paths)


def test_an_interrupted_build_resumes_where_it_stopped(data: Path) -> None:
    class Stop(Exception):
        pass

    def stop_after_two_chunks(done: int) -> None:
        if done >= 16:
            raise Stop

    with pytest.raises(Stop):
        build_cache(data / "train", size=32, chunk_size=8, on_chunk=stop_after_two_chunks, **QUIET)
    paths = cache_paths(data / "train", 32)
    assert not paths.manifest.exists() and find_cache(str(data / "train"), 32) is None
    resumed = build_cache(data / "train", size=32, chunk_size=8, **QUIET)
    assert resumed.built and resumed.resumed == 16 and resumed.unreadable == 1
    dataset = CachedImageDataset(resumed.manifest)
    for index, (path, _) in enumerate(dataset.samples):  # every row, resumed or not, is right
        item = dataset[index]
        if path.endswith("broken.jpg"):
            assert item is None
        else:
            assert np.array_equal(item[0].numpy(), decode_resized(path, 32, "squash")[0])


def test_two_concurrent_builders_build_once(data: Path) -> None:
    barrier, results = threading.Barrier(2), []

    def build() -> None:
        barrier.wait()
        results.append(build_cache(data / "train", size=32, **QUIET))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(r.built for r in results) == [False, True]


def test_a_held_lock_times_out_with_a_clear_error(data: Path) -> None:
    paths = cache_paths(data / "train", 32)
    paths.directory.mkdir()
    with FileLock(str(paths.lock)):
        with pytest.raises(CacheError, match="another build still holds the lock"):
            build_cache(data / "train", size=32, lock_timeout_s=0.2, **QUIET)


def test_split_discovery_and_bad_input(data: Path, tmp_path: Path) -> None:
    (data / "val" / "cat").mkdir(parents=True)
    shutil.copy2(data / "train" / "airplane" / "alpha.png", data / "val" / "cat" / "a.png")
    assert find_image_folders(data) == [data / "train", data / "val"]
    assert find_image_folders(data / "train") == [data / "train"]
    with pytest.raises(CacheError, match="no ImageFolder tree"):
        find_image_folders(data / "test")
    (data / "val" / "dog").mkdir()
    with pytest.raises(CacheError, match="dog hold no image"):
        build_cache(data / "val", size=32, **QUIET)
    with pytest.raises(CacheError, match="size must be an integer >= 8"):
        build_cache(data / "train", size=4, **QUIET)
    with pytest.raises(CacheError, match="fit must be one of squash, crop, pad"):
        build_cache(data / "train", size=32, fit="stretch", **QUIET)
    with pytest.raises(CacheError, match="not a directory"):
        build_cache(tmp_path / "missing", size=32, **QUIET)
