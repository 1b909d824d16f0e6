"""split_validation: stratification, determinism, modes, refusal and resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tuner.datasets.split import MANIFEST, SplitError, split_validation
from tuner.datasets.stats import list_image_folder

SIZES = {"10": 10, "20": 3, "30": 1, "40": 2, "50": 25}


def make_tree(root: Path) -> Path:
    for cls, n in SIZES.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{100 * int(cls) + i}.jpg").write_bytes(f"{cls}/{i}".encode())
    (root / "10" / "readme.txt").write_text("not an image: left alone")
    return root


def tree(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cls, path in list_image_folder(root):
        out.setdefault(cls, set()).add(path.name)
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "all")


def test_stratified_counts_and_partition(src: Path, tmp_path: Path) -> None:
    before = tree(src)
    result = split_validation(
        src, val_fraction=0.2, seed=0, out_train=tmp_path / "train", out_val=tmp_path / "val"
    )
    # round(n * 0.2), at least 1 when n >= 2, never the whole class.
    assert result.val == {"10": 2, "20": 1, "40": 1, "50": 5}
    assert result.train == {"10": 8, "20": 2, "30": 1, "40": 1, "50": 20}
    assert result.train_only == ["30"]
    train, val = tree(tmp_path / "train"), tree(tmp_path / "val")
    for cls, names in before.items():
        assert train[cls] | val.get(cls, set()) == names
        assert not train[cls] & val.get(cls, set())
    assert tree(src) == before  # copy mode leaves the source intact
    assert (tmp_path / "train" / "10" / "1000.jpg").read_bytes() == b"10/0"


def test_seeded_and_deterministic(tmp_path: Path) -> None:
    def val_names(seed: int, tag: str) -> dict[str, set[str]]:
        s = make_tree(tmp_path / f"src-{tag}")
        split_validation(
            s,
            val_fraction=0.3,
            seed=seed,
            out_train=tmp_path / f"t-{tag}",
            out_val=tmp_path / f"v-{tag}",
        )
        return tree(tmp_path / f"v-{tag}")

    first, again, other = val_names(7, "a"), val_names(7, "b"), val_names(8, "c")
    assert first == again
    assert first != other


def test_move_mode_and_in_place(src: Path, tmp_path: Path) -> None:
    before = tree(src)
    result = split_validation(
        src, val_fraction=0.5, seed=1, out_train=src, out_val=tmp_path / "val", mode="move"
    )
    remaining, val = tree(src), tree(tmp_path / "val")
    assert sum(len(v) for v in val.values()) == sum(result.val.values())
    for cls, names in before.items():
        assert remaining[cls] | val.get(cls, set()) == names
        assert not remaining[cls] & val.get(cls, set())
    # Running it again is a no-op that reports the same split.
    assert (
        split_validation(
            src, val_fraction=0.5, seed=1, out_train=src, out_val=tmp_path / "val", mode="move"
        )
        == result
    )


def test_link_mode_shares_inodes(src: Path, tmp_path: Path) -> None:
    split_validation(
        src, val_fraction=0.2, out_train=tmp_path / "train", out_val=tmp_path / "val", mode="link"
    )
    linked = tmp_path / "train" / "30" / "3000.jpg"
    assert os.stat(linked).st_ino == os.stat(src / "30" / "3000.jpg").st_ino


def test_idempotent_rerun_and_refusal(src: Path, tmp_path: Path) -> None:
    kw = {"out_train": tmp_path / "train", "out_val": tmp_path / "val"}
    first = split_validation(src, val_fraction=0.2, seed=3, **kw)
    assert split_validation(src, val_fraction=0.2, seed=3, **kw) == first
    with pytest.raises(SplitError, match=r"out_val .* is not empty .* refusing to overwrite"):
        split_validation(src, val_fraction=0.2, seed=4, **kw)
    other_train = tmp_path / "other"
    (other_train / "x").mkdir(parents=True)
    (other_train / "x" / "1.jpg").write_bytes(b"x")
    with pytest.raises(SplitError, match=r"out_train .* is not empty"):
        split_validation(src, val_fraction=0.2, out_train=other_train, out_val=tmp_path / "val2")


def test_resumes_interrupted_run(src: Path, tmp_path: Path) -> None:
    kw = {
        "val_fraction": 0.2,
        "seed": 0,
        "out_train": tmp_path / "train",
        "out_val": tmp_path / "val",
    }
    expected = split_validation(src, **kw)
    # Simulate a crash half-way: status back to in_progress, some files gone.
    manifest_path = tmp_path / "val" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "in_progress"
    manifest_path.write_text(json.dumps(manifest))
    for path in list((tmp_path / "train" / "50").iterdir())[:5]:
        path.unlink()
    assert split_validation(src, **kw) == expected
    assert len(list((tmp_path / "train" / "50").iterdir())) == 20
    assert json.loads(manifest_path.read_text())["status"] == "complete"


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan"), True, "0.2", None])
def test_bad_fraction(src: Path, tmp_path: Path, fraction: object) -> None:
    with pytest.raises(SplitError, match="val_fraction must be a number in"):
        split_validation(
            src, val_fraction=fraction, out_train=tmp_path / "t", out_val=tmp_path / "v"
        )  # type: ignore[arg-type]


def test_bad_paths_and_mode(src: Path, tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="mode must be one of"):
        split_validation(
            src, val_fraction=0.2, out_train=tmp_path / "t", out_val=tmp_path / "v", mode="symlink"
        )  # type: ignore[arg-type]
    with pytest.raises(SplitError, match="must differ"):
        split_validation(src, val_fraction=0.2, out_train=tmp_path / "t", out_val=tmp_path / "t")
    with pytest.raises(SplitError, match="must not contain each other"):
        split_validation(src, val_fraction=0.2, out_train=tmp_path / "t", out_val=src / "val")
    with pytest.raises(SplitError, match="only with mode='move'"):
        split_validation(src, val_fraction=0.2, out_train=src, out_val=tmp_path / "v")
    with pytest.raises(SplitError, match="not a directory"):
        split_validation(
            tmp_path / "missing", val_fraction=0.2, out_train=tmp_path / "t", out_val=tmp_path / "v"
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SplitError, match="no class folder with images"):
        split_validation(empty, val_fraction=0.2, out_train=tmp_path / "t", out_val=tmp_path / "v")
