"""CachedImageDataset / find_cache on real images: same samples as the files, same training result.

The caches are built with the real builder (``tuner.datasets.cache``) on a copy of part of the
shipped CIFAR-10 sample; training runs the real engine (``train_one_epoch`` / ``evaluate``).
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import trainables.cache
from trainables.cache import CachedImageDataset, cache_paths, find_cache
from trainables.data import (EpochSampler, RobustImageFolder, SeededItems, collate_skipping_bad,
                             load_rgb_image, make_loader)
from trainables.engine import evaluate, train_one_epoch
from trainables.models import build_model
from trainables.optim import build_optimizer
from trainables.transforms import build_eval_transform, build_train_transform
from tuner.datasets.cache import build_caches

TRAIN_PER_CLASS, VAL_PER_CLASS = 40, 20


@pytest.fixture(scope="module")
def data_root(demo_data: Path, tmp_path_factory) -> Path:
    """400 train / 200 val shipped images (10 classes) with a cache at 32 px beside them."""
    root = tmp_path_factory.mktemp("cached") / "data"
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for class_dir in sorted((demo_data / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:per_class]:
                shutil.copy2(path, target / path.name)
    shutil.copy2(demo_data / "stats.json", root / "stats.json")
    build_caches(root, size=32, workers=1, progress=False)
    return root


def test_same_samples_classes_and_pixels_as_the_image_folder(data_root: Path) -> None:
    manifest = find_cache(str(data_root / "train"), 32)
    assert manifest == cache_paths(data_root / "train", 32).manifest
    cached = CachedImageDataset(manifest)
    files = RobustImageFolder(data_root / "train")
    assert cached.class_to_idx == files.class_to_idx
    assert cached.targets == files.targets
    assert [p for p, _ in cached.samples] == [p for p, _ in files.samples]
    for index in range(0, len(cached), 37):  # 32x32 JPEGs at 32 px: no resize, identical bytes
        image, target = cached[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        expected = torch.from_numpy(np.array(load_rgb_image(files.samples[index][0])))
        assert torch.equal(image, expected.permute(2, 0, 1))
        assert target == files.targets[index]


def test_find_cache_picks_the_smallest_usable_size_and_never_a_smaller_one(data_root: Path) -> None:
    val = str(data_root / "val")
    build_caches(data_root / "val", size=40, workers=1, progress=False)
    assert find_cache(val, 32) == cache_paths(val, 32).manifest
    assert find_cache(val, 36) == cache_paths(val, 40).manifest  # resized down by the transforms
    assert find_cache(val, 48) is None  # would need upscaling
    assert find_cache(str(data_root / "nowhere"), 32) is None


def test_workers_map_the_file_instead_of_receiving_pixels(data_root: Path) -> None:
    dataset = CachedImageDataset(find_cache(str(data_root / "val"), 32),
                                 transform=build_eval_transform(32, [0.5] * 3, [0.25] * 3))
    dataset[0]  # opens the mapping in this process
    assert len(pickle.dumps(dataset)) < 100_000  # 200 images x 3 KB would be ~600 KB
    batches = {}
    for workers in (0, 2):
        loader = make_loader(dataset, batch_size=64, shuffle=False, num_workers=workers, seed=0,
                             pin_memory=False)
        loader.sampler.set_epoch(1)
        batches[workers] = torch.cat([batch.images for batch in loader])
    assert batches[0].shape == (200, 3, 32, 32) and batches[0].dtype == torch.float32
    assert torch.equal(batches[0], batches[2])


def _collate_and_say_if_shared(batch):
    collated = collate_skipping_bad(batch)
    return collated, collated.images.is_shared()


def test_a_worker_stacks_its_batch_in_shared_memory(data_root: Path) -> None:
    # In shared memory, the batch crosses to the trainer as it is; stacked in ordinary memory, it is
    # copied once more on the way (38 MB per batch of 256 at 224 px).
    dataset = CachedImageDataset(find_cache(str(data_root / "val"), 32))
    for workers, shared in ((0, False), (1, True)):
        loader = DataLoader(SeededItems(dataset), batch_size=64, num_workers=workers,
                            sampler=EpochSampler(len(dataset), seed=0, shuffle=False),
                            collate_fn=_collate_and_say_if_shared)
        said = [is_shared for _, is_shared in loader]
        assert said == [shared] * 4, (workers, said)


def _train(train_set, val_set, *, seed: int, epochs: int) -> list[tuple[float, float]]:
    """(train loss, val accuracy) per epoch of a width-0.125 resnet18, one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, 2 threads are ~7x slower than 1
    try:
        torch.manual_seed(seed)
        model = build_model("resnet18", num_classes=10, image_size=32, width=0.125)
        optimizer = build_optimizer(model.parameters(), name="adam", lr=0.003, momentum=0.9,
                                    nesterov=False, weight_decay=5e-4)
        train = make_loader(train_set, batch_size=32, shuffle=True, num_workers=0, seed=seed,
                            pin_memory=False)
        val = make_loader(val_set, batch_size=100, shuffle=False, num_workers=0, seed=0,
                          pin_memory=False)
        history = []
        for epoch in range(1, epochs + 1):
            train.sampler.set_epoch(epoch)  # order and augmentation depend on (seed, epoch) only
            loss = train_one_epoch(model, train, optimizer, torch.device("cpu")).loss
            accuracy = evaluate(model, val, torch.device("cpu"), num_classes=10).accuracy
            history.append((loss, accuracy))
        return history
    finally:
        torch.set_num_threads(threads)


def test_a_trial_trained_from_the_cache_matches_one_trained_from_files(data_root: Path) -> None:
    """Same seeds, augmentation (light: random crop + flip), optimizer and engine; only the source
    of the pixels differs (runner.run_trial does not read caches yet: the engine is driven here)."""
    stats = json.loads((data_root / "stats.json").read_text())
    train_tf = build_train_transform("light", 32, stats["mean"], stats["std"])
    eval_tf = build_eval_transform(32, stats["mean"], stats["std"])
    train_dir, val_dir = str(data_root / "train"), str(data_root / "val")
    from_files = _train(RobustImageFolder(train_dir, transform=train_tf),
                        RobustImageFolder(val_dir, transform=eval_tf), seed=3, epochs=3)
    from_cache = _train(CachedImageDataset(find_cache(train_dir, 32), transform=train_tf),
                        CachedImageDataset(find_cache(val_dir, 32), transform=eval_tf),
                        seed=3, epochs=3)
    assert from_files[-1][0] < from_files[0][0] - 0.15, f"the trial did not learn: {from_files}"
    # Within noise: 200 validation images give a binomial std of ~0.03 on the accuracy.
    assert abs(from_cache[-1][1] - from_files[-1][1]) <= 0.05, (from_cache, from_files)
    # Stronger: at 32 px the cached pixels ARE the decoded JPEGs, so on CPU the runs agree exactly.
    for (loss_c, _), (loss_f, _) in zip(from_cache, from_files):
        assert loss_c == pytest.approx(loss_f, rel=1e-6), (from_cache, from_files)


def test_an_unreadable_image_is_skipped_and_counted(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root / "val", root / "val")
    (root / "val" / "cat" / "broken.jpg").write_bytes(b"<html>not an image</html>")
    build_caches(root, size=32, workers=1, progress=False)
    dataset = CachedImageDataset(find_cache(str(root / "val"), 32),
                                 transform=build_eval_transform(32, [0.5] * 3, [0.25] * 3))
    assert dataset.unreadable == 1 and len(dataset) == 201
    broken = [i for i, (p, _) in enumerate(dataset.samples) if p.endswith("broken.jpg")]
    assert dataset[broken[0]] is None
    loader = make_loader(dataset, batch_size=300, shuffle=False, num_workers=0, seed=0,
                         pin_memory=False)
    loader.sampler.set_epoch(1)
    batch = next(iter(loader))
    assert (len(batch.images), len(batch.labels), batch.skipped) == (200, 200, 1)


def test_the_reader_imports_neither_tuner_nor_ray() -> None:
    """The trial side must run where neither is installed (and tuner -> trainables, never back)."""
    tree = ast.parse(Path(trainables.cache.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"tuner", "ray"}, roots
    # No other trainables module either (but the dependency-free error base), so this file's own
    # imports are the whole story.
    assert {name for name in imported if name.startswith("trainables")} <= {"trainables.errors", "trainables.image_files"}, imported
