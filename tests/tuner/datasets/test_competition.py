"""load_competition_json on the real validation.json and on each bad-input case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuner.datasets.competition import (
    CompetitionDataError,
    CompetitionIndex,
    Item,
    load_competition_json,
)


def write(tmp_path: Path, data: Any, name: str = "validation.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def doc(images: list[Any], annotations: list[Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"images": images}
    if annotations is not None:
        data["annotations"] = annotations
    return data


def img(image_id: Any, *urls: Any) -> dict[str, Any]:
    return {"image_id": image_id, "url": list(urls) or ["http://example.com/a.jpg"]}


def test_real_validation_json(validation_json: Path) -> None:
    index = load_competition_json(validation_json)
    assert isinstance(index, CompetitionIndex)
    assert len(index.items) + len(index.skipped) == 6400
    assert index.items[0] == Item(
        image_id=1,
        urls=(
            "http://www.ghs.net/public/images/fb/3d/51/3bebd41a640b6d3278e781c86ab67d6401a48633.jpg",
        ),
        label=38,
    )
    assert all(item.label is not None and item.label >= 0 for item in index.items)
    assert len({item.image_id for item in index.items}) == len(index.items)
    assert index.labelled


def test_test_json_without_annotations_is_unlabelled(tmp_path: Path) -> None:
    index = load_competition_json(write(tmp_path, doc([img(1), img(2)]), "test.json"))
    assert [item.label for item in index.items] == [None, None]
    assert not index.labelled and index.warnings == []


def test_plain_string_url_accepted_with_one_counted_warning(tmp_path: Path) -> None:
    images = [
        {"image_id": 1, "url": "http://a.example/1.jpg"},
        {"image_id": 2, "url": "https://a.example/2.jpg"},
        img(3),
    ]
    index = load_competition_json(write(tmp_path, doc(images)))
    assert index.items[0].urls == ("http://a.example/1.jpg",)
    assert len(index.warnings) == 1
    assert "2 image(s)" in index.warnings[0] and "plain string" in index.warnings[0]


def test_empty_url_list_and_bad_schemes_are_counted_skips(tmp_path: Path) -> None:
    images = [
        {"image_id": 1, "url": []},
        img(2, "file:///etc/passwd"),
        img(3, "ftp://a.example/x.jpg"),
        img(4, "ftp://a.example/x.jpg", "http://a.example/ok.jpg"),
        img(5, "javascript:alert(1)"),
        img(6),
    ]
    index = load_competition_json(write(tmp_path, doc(images)))
    assert [i.image_id for i in index.items] == [4, 6]
    assert index.items[0].urls == ("http://a.example/ok.jpg",)  # bad URL dropped, good kept
    reasons = dict(index.skipped)
    assert reasons[1] == "no URL"
    assert "'file'" in reasons[2] and "'ftp'" in reasons[3] and "'javascript'" in reasons[5]
    assert any("1 non-http(s) URL(s) ignored" in w for w in index.warnings)
    assert any("4 image(s) skipped" in w for w in index.warnings)


def test_labels_are_attached(tmp_path: Path) -> None:
    data = doc(
        [img(1), img(2), img(3)], [{"image_id": 2, "label_id": 0}, {"image_id": 1, "label_id": 7}]
    )
    index = load_competition_json(write(tmp_path, data))
    assert [(i.image_id, i.label) for i in index.items] == [(1, 7), (2, 0), (3, None)]
    assert any("1 image(s) have no annotation" in w for w in index.warnings)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"images": [}', "not valid JSON at line 1 column"),
        ("", "not valid JSON at line 1 column 1"),
        ('{\n  "images": [\n    {"image_id": 1,,}\n  ]\n}', "line 3 column"),
        ("[1, 2]", "top level must be a JSON object, got list"),
        ('"images"', "top level must be a JSON object, got str"),
        ("{}", "missing required key 'images'"),
        ('{"images": {"1": "x"}}', "images: must be a list, got dict"),
        ('{"images": [5]}', "images[0]: must be an object, got int"),
        ('{"images": [{"url": ["http://a/b"]}]}', "images[0]: missing required key 'image_id'"),
        ('{"images": [{"image_id": 1}]}', "images[0]: missing required key 'url'"),
        (
            '{"images": [{"image_id": 1, "url": 5}]}',
            "images[0].url: must be a list of strings, got int",
        ),
        (
            '{"images": [{"image_id": 1, "url": [5]}]}',
            "images[0].url[0]: must be a string, got int",
        ),
    ],
)
def test_structural_errors(tmp_path: Path, content: str, expected: str) -> None:
    with pytest.raises(CompetitionDataError) as err:
        load_competition_json(write(tmp_path, content))
    message = str(err.value)
    assert message.startswith("validation.json: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("image_id", "shown"),
    [
        ("../x", "'../x'"),
        (-3, "-3"),
        (0, "0"),
        (1.5, "1.5"),
        (2.0, "2.0"),
        (True, "True"),
        (None, "None"),
        ([1], "[1]"),
    ],
)
def test_bad_image_ids(tmp_path: Path, image_id: Any, shown: str) -> None:
    data = doc([img(1), img(2), img(3), img(image_id)])
    with pytest.raises(CompetitionDataError) as err:
        load_competition_json(write(tmp_path, data))
    assert (
        str(err.value)
        == f"validation.json: images[3].image_id: must be a positive integer, got {shown}"
    )


def test_duplicate_image_ids(tmp_path: Path) -> None:
    with pytest.raises(
        CompetitionDataError,
        match=r"images\[2\].image_id: duplicate id 7 \(first seen at images\[0\]\)",
    ):
        load_competition_json(write(tmp_path, doc([img(7), img(8), img(7)])))


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ({"image_id": 99, "label_id": 1}, "annotations[0].image_id: refers to unknown image 99"),
        (
            {"image_id": 1, "label_id": -1},
            "annotations[0].label_id: must be a non-negative integer, got -1",
        ),
        (
            {"image_id": 1, "label_id": "3"},
            "annotations[0].label_id: must be a non-negative integer, got '3'",
        ),
        ({"image_id": 1, "label_id": 3.0}, "must be a non-negative integer, got 3.0"),
        ({"image_id": 1, "label_id": False}, "must be a non-negative integer, got False"),
        (
            {"image_id": "1", "label_id": 3},
            "annotations[0].image_id: must be a positive integer, got '1'",
        ),
        ({"label_id": 3}, "annotations[0]: missing required key 'image_id'"),
        ({"image_id": 1}, "annotations[0]: missing required key 'label_id'"),
        ("x", "annotations[0]: must be an object, got str"),
    ],
)
def test_bad_annotations(tmp_path: Path, annotation: Any, expected: str) -> None:
    with pytest.raises(CompetitionDataError) as err:
        load_competition_json(write(tmp_path, doc([img(1)], [annotation])))
    assert expected in str(err.value)


def test_conflicting_and_repeated_annotations(tmp_path: Path) -> None:
    same = doc([img(1)], [{"image_id": 1, "label_id": 4}, {"image_id": 1, "label_id": 4}])
    index = load_competition_json(write(tmp_path, same))
    assert index.items[0].label == 4
    assert any("repeated identical annotation" in w for w in index.warnings)
    clash = doc([img(1)], [{"image_id": 1, "label_id": 4}, {"image_id": 1, "label_id": 5}])
    with pytest.raises(CompetitionDataError, match="already labelled 4, got conflicting 5"):
        load_competition_json(write(tmp_path, clash))


def test_annotations_not_a_list(tmp_path: Path) -> None:
    with pytest.raises(CompetitionDataError, match="annotations: must be a list, got dict"):
        load_competition_json(write(tmp_path, {"images": [], "annotations": {}}))


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(CompetitionDataError, match=r"missing\.json: cannot read file"):
        load_competition_json(tmp_path / "missing.json")
    bad = tmp_path / "bin.json"
    bad.write_bytes(b'{"images": ["\xff\xfe"]}')
    with pytest.raises(CompetitionDataError, match=r"bin\.json: not UTF-8 text at byte 13"):
        load_competition_json(bad)


def test_huge_integer_and_deep_nesting_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(CompetitionDataError, match="not valid JSON"):
        load_competition_json(write(tmp_path, '{"images": [{"image_id": ' + "9" * 5000 + "}]}"))
    with pytest.raises(CompetitionDataError, match="nested too deeply"):
        load_competition_json(write(tmp_path, "[" * 100_000 + "]" * 100_000))
