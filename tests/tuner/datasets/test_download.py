"""download_images against a real loopback HTTP server.

The first entries of the real validation.json are re-pointed at the server
with ``rewrite_host`` (paths kept); each path is given one behaviour (good
image, 404, timeout, truncated body, ...). The socket audit recorder proves
that nothing but 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import csv
import fcntl
import gzip
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tuner.datasets.competition import CompetitionIndex, Item, load_competition_json
from tuner.datasets.download import (
    FAILURES_CSV,
    LOCK_FILE,
    DownloadInProgressError,
    DownloadSummary,
    download_images,
    item_path,
)

from .loopback_server import (
    Behaviour,
    bomb_png,
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    gif,
    jpeg,
    path_of,
    photo,
    png_rgba,
)

MAX_BYTES = 200_000
# timeout_s: a real answer on a loaded 2-core box may take a second; the "timeout" case does not
# depend on it (its server never answers), so it costs (retries + 1) * timeout_s of one worker.
FAST = {"workers": 4, "timeout_s": 2.0, "retries": 1, "backoff_s": 0.01, "max_bytes": MAX_BYTES}


def good(seed: int) -> Behaviour:
    return Behaviour(body=jpeg(48 + seed % 5 * 16, 40 + seed % 3 * 12, seed))


def scenario(server: Any) -> list[tuple[Behaviour, str]]:
    """(behaviour, expected reason or "ok") for consecutive JSON entries."""
    redirect_target = "/redirected/good.jpg"
    server.routes[redirect_target] = good(99)
    bad = [
        (Behaviour(body=png_rgba(64, 48, 1), content_type="image/png"), "ok"),
        (Behaviour(body=gif(50, 40, 2), content_type="image/gif"), "ok"),
        (Behaviour(body=cmyk_jpeg(40, 40, 3)), "ok"),
        (Behaviour(body=exif_rotated_jpeg(60, 30, 4)), "ok"),
        (Behaviour(status=404, body=b"not here", content_type="text/html"), "http_404"),
        (Behaviour(kind="hang"), "timeout"),
        (Behaviour(kind="truncated", body=jpeg(64, 64, 6)[:500]), "truncated"),
        (Behaviour(body=jpeg(200, 150, 7)[:1500]), "truncated"),  # HTTP-complete, JPEG cut
        (Behaviour(body=b"<html><body>Image removed</body></html>"), "not_an_image"),
        (Behaviour(body=b""), "not_an_image"),
        (Behaviour(kind="redirect", status=302, location=redirect_target), "ok"),
        (Behaviour(kind="redirect", status=301, location="ftp://example.com/x.jpg"), "blocked"),
        (Behaviour(kind="redirect", status=302, location="http://10.1.2.3/x.jpg"), "blocked"),
        (
            Behaviour(
                kind="redirect", status=307, location="http://169.254.169.254/latest/meta-data/"
            ),
            "blocked",
        ),
        (Behaviour(body=bomb_png(20_000), content_type="image/png"), "decompression_bomb"),
        (Behaviour(body=bomb_png(10_000), content_type="image/png"), "decompression_bomb"),
        (Behaviour(body=b"\xff" * (MAX_BYTES + 1)), "too_large"),  # Content-Length check
        (Behaviour(kind="stream", body=b"\xff" * (3 * MAX_BYTES)), "too_large"),  # counted
        (Behaviour(kind="reset"), "connection_error"),
        (Behaviour(kind="flaky", fail_times=1, body=jpeg(40, 40, 8)), "ok"),
        (Behaviour(status=503, body=b"down", content_type="text/plain"), "http_503"),
        (Behaviour(kind="redirect", status=302, location="/loop"), "redirect_error"),
    ]
    server.routes["/loop"] = Behaviour(kind="redirect", status=302, location="/loop")
    goods = [(good(i), "ok") for i in range(12)]
    return goods[:6] + bad + goods[6:]


def build(server: Any, validation_json: Path) -> tuple[CompetitionIndex, dict[int, str]]:
    full = load_competition_json(validation_json)
    plan = scenario(server)
    items = full.items[: len(plan)]
    expected: dict[int, str] = {}
    for item, (behaviour, outcome) in zip(items, plan, strict=True):
        server.routes[path_of(item.urls[0])] = behaviour
        expected[item.image_id] = outcome
    return CompetitionIndex(items=list(items), source=full.source), expected


def read_failures(out: Path) -> dict[int, dict[str, str]]:
    with open(out / FAILURES_CSV, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert all(set(r) == {"image_id", "url", "reason", "detail"} for r in rows)
    return {int(r["image_id"]): r for r in rows}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_behaviours_reasons_and_resume(
    loopback: Any, validation_json: Path, tmp_path: Path, socket_recorder: Any
) -> None:
    index, expected = build(loopback, validation_json)
    out = tmp_path / "train"
    summary = download_images(
        index, out_dir=out, rewrite_host=loopback.base_url, allow_loopback=True,
        max_redirects=3, progress=True, **FAST,
    )  # fmt: skip

    wanted_failures = Counter(r for r in expected.values() if r != "ok")
    assert summary.failed == dict(wanted_failures)
    assert summary.downloaded == sum(r == "ok" for r in expected.values())
    assert (summary.requested, summary.skipped_existing, summary.skipped_in_json) == (
        len(index.items),
        0,
        0,
    )

    rows = read_failures(out)
    assert {i: r["reason"] for i, r in rows.items()} == {
        i: r for i, r in expected.items() if r != "ok"
    }
    by_id = {item.image_id: item for item in index.items}
    for image_id, row in rows.items():
        assert row["url"] == by_id[image_id].urls[0]  # the URL as written in the JSON
        assert row["detail"]
        assert not item_path(out, by_id[image_id]).exists()
    assert "private" in rows[index.items[18].image_id]["detail"]
    assert "metadata" in rows[index.items[19].image_id]["detail"]
    assert "'ftp'" in rows[index.items[17].image_id]["detail"]

    for item in index.items:
        if expected[item.image_id] == "ok":
            with Image.open(item_path(out, item)) as im:
                assert (im.format, im.mode) == ("JPEG", "RGB")
                im.load()
    with Image.open(item_path(out, index.items[9])) as im:  # EXIF orientation 6 applied
        assert im.size == (30, 60)
    with Image.open(item_path(out, index.items[6])) as im:  # transparent corner -> white
        assert min(im.getpixel((0, 0))) > 235
    assert not list(out.rglob("*.part"))

    # Retries: 503-then-OK was asked twice, 404 once, the plain 503 twice.
    hits = {item.image_id: loopback.hits[path_of(item.urls[0])] for item in index.items}
    assert hits[index.items[25].image_id] == 2
    assert hits[index.items[10].image_id] == 1
    assert hits[index.items[26].image_id] == 2

    # Only the loopback server was contacted; the blocked hops were never
    # resolved or connected to, and no real host from the JSON either.
    assert socket_recorder.contacted_hosts() == {"127.0.0.1"}
    assert not {"example.com", "10.1.2.3", "169.254.169.254"} & set(socket_recorder.lookups)

    # Resume: finished files are not requested again, failures are retried.
    loopback.reset_hits()
    again = download_images(
        index, out_dir=out, rewrite_host=loopback.base_url, allow_loopback=True,
        max_redirects=3, progress=False, **FAST,
    )  # fmt: skip
    assert again.skipped_existing == summary.downloaded and again.downloaded == 0
    assert again.failed == summary.failed
    for item in index.items:
        if expected[item.image_id] == "ok":
            assert loopback.hits[path_of(item.urls[0])] == 0


def test_unlabelled_items_fallback_urls_and_max_side(loopback: Any, tmp_path: Path) -> None:
    loopback.routes.update(
        {
            "/big.jpg": Behaviour(body=jpeg(300, 200, 1)),
            "/tall.png": Behaviour(body=png_rgba(50, 400, 2), content_type="image/png"),
            "/small.jpg": Behaviour(body=jpeg(20, 10, 3)),
            "/gone.jpg": Behaviour(status=404),
        }
    )
    base = "http://img.example.com"
    index = CompetitionIndex(
        items=[
            Item(1, (f"{base}/big.jpg",)),
            Item(2, (f"{base}/gone.jpg", f"{base}/tall.png")),
            Item(3, (f"{base}/small.jpg",)),
            Item(4, (f"{base}/gone.jpg", f"{base}/nothing.jpg")),
        ]
    )
    out = tmp_path / "test"
    summary = download_images(
        index, out_dir=out, max_side=64, rewrite_host=loopback.base_url,
        allow_loopback=True, progress=False, **FAST,
    )  # fmt: skip
    assert (summary.downloaded, summary.failed) == (3, {"http_404": 1})
    sizes = {}
    for image_id in (1, 2, 3):
        with Image.open(out / f"{image_id}.jpg") as im:
            sizes[image_id] = im.size
    assert sizes == {1: (64, 43), 2: (8, 64), 3: (20, 10)}
    row = read_failures(out)[4]
    assert row["url"] == f"{base}/nothing.jpg"
    assert f"{base}/gone.jpg -> http_404" in row["detail"]


def test_slow_drip_hits_total_deadline(loopback: Any, tmp_path: Path) -> None:
    """A server sending one byte per 50 ms never trips the read timeout."""
    loopback.routes["/drip.jpg"] = Behaviour(kind="drip", delay=0.05, body=jpeg(64, 64, 1))
    index = CompetitionIndex(items=[Item(1, ("http://x.example/drip.jpg",))])
    summary = download_images(
        index, out_dir=tmp_path, timeout_s=0.2, retries=0, rewrite_host=loopback.base_url,
        allow_loopback=True, progress=False,
    )  # fmt: skip
    assert summary.failed == {"timeout": 1}
    assert "slower than" in read_failures(tmp_path)[1]["detail"]


# Whole-exchange deadline: generous per-read timeout, short deadline, so that only the
# deadline can stop these servers. SLACK_S covers thread start-up on a loaded 2-core box.
DEADLINE_S = 1.5
SLACK_S = 1.0


def timed_download(
    loopback: Any, out: Path, paths: list[str], **kwargs: Any
) -> tuple[DownloadSummary, float]:
    """Download one item per path (through ``rewrite_host``); return summary and seconds."""
    items = [Item(i, (f"http://x.example{path}",)) for i, path in enumerate(paths, 1)]
    index = CompetitionIndex(items=items)
    options = {"timeout_s": 2.0, "deadline_s": DEADLINE_S, "retries": 0, **kwargs}
    start = time.monotonic()
    summary = download_images(
        index, out_dir=out, rewrite_host=loopback.base_url, allow_loopback=True,
        progress=False, **options,
    )  # fmt: skip
    return summary, time.monotonic() - start


def test_slow_headers_are_cut_off_at_the_deadline(loopback: Any, tmp_path: Path) -> None:
    """Status line, then one header byte per second: no single read ever times out."""
    loopback.routes["/head.jpg"] = Behaviour(kind="drip_headers", delay=1.0, body=jpeg(32, 32, 1))
    summary, elapsed = timed_download(loopback, tmp_path, ["/head.jpg"])
    assert summary.failed == {"timeout": 1}
    assert elapsed < DEADLINE_S + SLACK_S
    detail = read_failures(tmp_path)[1]["detail"]
    assert "/head.jpg" in detail and f"{DEADLINE_S:g}s deadline" in detail


def test_redirect_hops_share_one_deadline(loopback: Any, tmp_path: Path) -> None:
    """Each hop answers well within the read timeout; together they exceed the deadline."""
    hops = 8
    for k in range(hops):
        loopback.routes[f"/hop{k}"] = Behaviour(
            kind="redirect", status=302, location=f"/hop{k + 1}", delay=0.5
        )
    loopback.routes[f"/hop{hops}"] = good(1)
    summary, elapsed = timed_download(loopback, tmp_path, ["/hop0"], max_redirects=hops)
    assert summary.failed == {"timeout": 1}
    assert elapsed < DEADLINE_S + SLACK_S
    assert loopback.hits[f"/hop{hops}"] == 0  # cut off mid-chain, not after it
    assert "redirect" in read_failures(tmp_path)[1]["detail"]


def test_encoded_response_is_refused_before_decoding(loopback: Any, tmp_path: Path) -> None:
    """A gzip bomb far under max_bytes on the wire, 10x over it decoded, is never decoded."""
    cap = 2 * 2**20  # well above the allocations of a cold first run (imports), ~0.7 MB
    bomb = gzip.compress(b"\0" * (10 * cap))
    assert len(bomb) < cap // 50
    loopback.routes.update(
        {
            "/bomb.jpg": Behaviour(body=bomb, encoding="gzip"),
            "/plain.jpg": good(2),
            "/identity.jpg": Behaviour(body=jpeg(40, 30, 3), encoding="identity"),
        }
    )
    tracemalloc.start()
    try:
        refused, _ = timed_download(loopback, tmp_path / "bomb", ["/bomb.jpg"], max_bytes=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.failed == {"content_encoding": 1}
    detail = read_failures(tmp_path / "bomb")[1]["detail"]
    assert "/bomb.jpg" in detail and "'gzip'" in detail and "identity" in detail
    assert peak < cap  # all Python allocations of that run, imports included
    plain, _ = timed_download(loopback, tmp_path / "plain", ["/plain.jpg", "/identity.jpg"])
    assert (plain.downloaded, plain.failed) == (2, {})


def test_blocked_without_allow_loopback(loopback: Any, tmp_path: Path) -> None:
    loopback.routes["/a.jpg"] = good(1)
    index = CompetitionIndex(items=[Item(1, ("http://x.example/a.jpg",), 3)])
    summary = download_images(
        index, out_dir=tmp_path, rewrite_host=loopback.base_url, progress=False
    )
    assert summary.failed == {"blocked": 1}
    assert sum(loopback.hits.values()) == 0


def test_refuses_concurrent_run_on_same_dir(tmp_path: Path) -> None:
    with open(tmp_path / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadInProgressError):
            download_images(CompetitionIndex(), out_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"timeout_s": 0},
        {"deadline_s": 0},
        {"retries": -1},
        {"max_bytes": 0},
        {"max_side": 0},
        {"rewrite_host": "127.0.0.1:80"},
        {"rewrite_host": "http://127.0.0.1:80/path"},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        download_images(CompetitionIndex(), out_dir=tmp_path, progress=False, **kwargs)


def test_only_web_image_formats_are_decoded(loopback: Any, tmp_path: Path) -> None:
    """BMP/WEBP are fine; PPM/TGA/PSD-like formats are refused as not_an_image."""
    img = photo(30, 20, 1)
    loopback.routes.update(
        {
            "/a.bmp": Behaviour(body=encode(img, "BMP"), content_type="image/bmp"),
            "/b.webp": Behaviour(body=encode(img, "WEBP"), content_type="image/webp"),
            "/c.ppm": Behaviour(body=encode(img, "PPM")),
            "/d.tga": Behaviour(body=encode(img, "TGA")),
        }
    )
    names = ["/a.bmp", "/b.webp", "/c.ppm", "/d.tga"]
    index = CompetitionIndex(
        items=[Item(i, (f"http://x.example{n}",), 0) for i, n in enumerate(names, 1)]
    )
    summary = download_images(
        index, out_dir=tmp_path, rewrite_host=loopback.base_url, allow_loopback=True, progress=False
    )
    assert (summary.downloaded, summary.failed) == (2, {"not_an_image": 2})
    assert {int(i) for i in read_failures(tmp_path)} == {3, 4}


def test_huge_image_id_is_a_counted_skip_and_the_rest_downloads(
    loopback: Any, tmp_path: Path
) -> None:
    """A 300-digit id (a file name over NAME_MAX) once aborted the run with ENAMETOOLONG."""
    loopback.routes["/a.jpg"] = good(1)
    huge = 10**299
    raw = tmp_path / "test.json"
    raw.write_text(
        '{"images": [{"url": ["http://x.example/a.jpg"], "image_id": 1},'
        f' {{"url": ["http://x.example/a.jpg"], "image_id": {huge}}}]}}'
    )
    index = load_competition_json(raw)
    assert [i.image_id for i in index.items] == [1]
    assert index.skipped[0][0] == huge and "below 2**63" in index.skipped[0][1]
    # An index built in memory (no JSON validation) gets the same rule from the downloader.
    index.items.append(Item(huge, ("http://x.example/a.jpg",), 3))
    out = tmp_path / "out"
    summary = download_images(
        index, out_dir=out, rewrite_host=loopback.base_url, allow_loopback=True, progress=False
    )
    assert (summary.downloaded, summary.skipped_in_json, summary.failed) == (1, 1, {"bad_id": 1})
    assert (out / "1.jpg").is_file()
    row = read_failures(out)[huge]
    assert row["reason"] == "bad_id" and "2**63" in row["detail"]


def test_planted_symlinks_are_never_written_through(loopback: Any, tmp_path: Path) -> None:
    """A symlink at the failures CSV or the lock file path must not redirect tuner's writes."""
    loopback.routes["/gone.jpg"] = Behaviour(status=404)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / FAILURES_CSV).symlink_to(victim)
    index = CompetitionIndex(items=[Item(1, ("http://x.example/gone.jpg",))])
    summary = download_images(
        index, out_dir=out, rewrite_host=loopback.base_url, allow_loopback=True, progress=False
    )
    assert summary.failed == {"http_404": 1}
    assert victim.read_text() == "precious\n"
    assert not (out / FAILURES_CSV).is_symlink() and 1 in read_failures(out)


def test_lock_file_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).symlink_to(tmp_path / "created_by_tuner")
    with pytest.raises(OSError, match="symlink"):
        download_images(CompetitionIndex(), out_dir=out, progress=False)
    assert not (tmp_path / "created_by_tuner").exists()


def test_part_file_symlink_is_not_followed(tmp_path: Path) -> None:
    """save_image writes <id>.jpg.part then renames it; a symlink planted there is replaced."""
    from tuner.datasets.image_normalize import save_image

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "7.jpg"
    (out / "7.jpg.part").symlink_to(victim)
    save_image(jpeg(32, 24, 1), dest, None)
    assert victim.read_text() == "precious\n"
    assert not dest.is_symlink()
    with Image.open(dest) as img:
        assert img.size == (32, 24)
