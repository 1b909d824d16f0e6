"""Property tests: any input gives a valid CompetitionIndex or a
CompetitionDataError with a one-line message, never another exception."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from tuner.datasets.competition import (
    CompetitionDataError,
    CompetitionIndex,
    load_competition_json,
    parse_competition,
)

# database=None: no .hypothesis/ folder is written into the work tree.
SETTINGS = settings(max_examples=150, deadline=None, database=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
urls = st.one_of(
    st.sampled_from(
        [
            "http://a.example/x.jpg",
            "https://b.example:8443/y?z=1",
            "file:///etc/passwd",
            "ftp://c.example/z",
            "http://",
            "http://[::1",
            "http://a.example:99999/",
            "//no-scheme/x",
            "",
        ]
    ),
    st.text(max_size=30),
)
ids = st.one_of(st.integers(min_value=-3, max_value=30), scalars)
image_entries = st.fixed_dictionaries(
    {"image_id": ids},
    optional={"url": st.one_of(urls, st.lists(urls, max_size=3), scalars), "extra": json_like},
)
annotation_entries = st.fixed_dictionaries(
    {},
    optional={"image_id": ids, "label_id": st.one_of(st.integers(-2, 300), scalars)},
)
# Documents shaped like the real files, so the deeper rules get exercised.
near_valid = st.fixed_dictionaries(
    {"images": st.one_of(st.lists(image_entries, max_size=6), json_like)},
    optional={"annotations": st.one_of(st.lists(annotation_entries, max_size=6), json_like)},
)


def check_index(index: CompetitionIndex) -> None:
    seen: set[int] = set()
    for item in index.items:
        assert type(item.image_id) is int and item.image_id > 0
        assert item.image_id not in seen
        seen.add(item.image_id)
        assert item.label is None or (type(item.label) is int and item.label >= 0)
        assert isinstance(item.urls, tuple) and item.urls
        for url in item.urls:
            parts = urlsplit(url)
            assert parts.scheme.lower() in ("http", "https") and parts.hostname
    for image_id, reason in index.skipped:
        assert type(image_id) is int and image_id > 0 and image_id not in seen
        assert isinstance(reason, str) and reason
    assert all(isinstance(w, str) and "\n" not in w for w in index.warnings)


def parse_or_data_error(data: Any) -> None:
    try:
        index = parse_competition(data, source="x.json")
    except CompetitionDataError as exc:
        assert str(exc).startswith("x.json: ") and "\n" not in str(exc)
        return
    check_index(index)


@SETTINGS
@given(json_like)
def test_any_json_value(data: Any) -> None:
    parse_or_data_error(data)


@SETTINGS
@given(near_valid)
def test_near_valid_documents(data: Any) -> None:
    parse_or_data_error(data)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_file_content(content: bytes) -> None:
    fd, name = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        try:
            index = load_competition_json(name)
        except CompetitionDataError as exc:
            assert "\n" not in str(exc)
            return
        check_index(index)
    finally:
        os.unlink(name)


@SETTINGS
@given(near_valid)
def test_file_round_trip_matches_in_memory(data: Any) -> None:
    """Serialising then loading from disk agrees with parsing in memory."""
    try:
        text = json.dumps(data)
    except ValueError:
        return
    fd, name = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        outcomes = []
        for load in (
            lambda: load_competition_json(name),
            lambda: parse_competition(json.loads(text)),
        ):
            try:
                index = load()
                outcomes.append((index.items, index.skipped))
            except CompetitionDataError:
                outcomes.append("error")
        assert outcomes[0] == outcomes[1]
    finally:
        os.unlink(name)
