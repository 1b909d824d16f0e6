"""The README stays a first screen, and no relative link in README.md or docs/*.md is dead.

Cheap and offline: links to http(s) and mail addresses are not followed. A link's ``#anchor`` must
name a heading of the target file (GitHub's slugs: lower case, punctuation dropped, spaces -> -).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def prose(path: Path) -> str:
    """The page without code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text()))


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1).replace("`", "")) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not t.startswith(EXTERNAL)]


def test_readme_is_a_first_screen_not_a_manual():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (limit {README_MAX_LINES}): move reference material to docs/")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(page):
    dead = []
    for target in links(page):
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            dead.append(f"{target} (no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            dead.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert dead == [], f"{page.relative_to(ROOT)}: dead links: {dead}"


def test_the_link_checker_sees_a_dead_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [dead](missing.md) `[code](not-a-link.md)`\n"
                    "```\n[fenced](nor-this.md)\n```\n![img](pic.png) [web](https://example.com)\n")
    assert links(page) == ["#top", "missing.md", "pic.png"]
    assert anchors(page) == {"top"}
    assert slug("From `ray up cluster.yaml` to a promoted model (AWS)".replace("`", "")) == \
        "from-ray-up-clusteryaml-to-a-promoted-model-aws"
