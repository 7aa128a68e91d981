"""Every rule page's code blocks are run: ``python bad`` fires the page's rule,
``python good`` does not, the i-th ``python fixed`` is exactly what ``fix`` makes of
the i-th bad block (feature fixes on). Every implemented rule has a page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import check_tree, fix_tree, join_files, split_files, write_tree
from trainaudit.catalogue import BY_CODE
from trainaudit.registry import load_rules

PAGES = Path(__file__).resolve().parent.parent / "rules"
BLOCK = re.compile(r"^```python (bad|good|fixed)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _pages() -> list[Path]:
    return sorted(PAGES.glob("TA*.md"))


def _blocks(page: Path) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {"bad": [], "good": [], "fixed": []}
    for kind, body in BLOCK.findall(page.read_text(encoding="utf-8")):
        blocks[kind].append(body)
    return blocks


def test_every_implemented_rule_has_a_page() -> None:
    slugs = {p.stem for p in _pages()}
    missing = [BY_CODE[c].slug for c in load_rules() if BY_CODE[c].slug not in slugs]
    assert missing == []


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.stem)
def test_page(page: Path, tmp_path: Path) -> None:
    code = page.stem.split("-", 1)[0]
    info = BY_CODE[code]
    assert page.stem == info.slug
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# {code} {info.name}\n")
    for section in ("## What it does", "## Why is this bad?", "## Example", "## Fix",
                    "## What it does not flag"):
        assert section in text, section
    blocks = _blocks(page)
    assert blocks["bad"] and blocks["good"]
    # TA002 judges the suppressions of the other selected rules: select them all.
    select = ("ALL",) if code == "TA002" else (code,)
    for i, body in enumerate(blocks["bad"]):
        root = tmp_path / f"bad{i}"
        write_tree(root, split_files(body))
        assert code in {f.code for f in check_tree(root, select=select).findings}
    for i, body in enumerate(blocks["good"]):
        root = tmp_path / f"good{i}"
        write_tree(root, split_files(body))
        assert code not in {f.code for f in check_tree(root, select=select).findings}
    # The i-th ``fixed`` block is what ``fix`` makes of the i-th ``bad`` block.
    for i, (bad, expected) in enumerate(zip(blocks["bad"], blocks["fixed"], strict=False)):
        assert info.fix is not None
        files = split_files(bad)
        root = tmp_path / f"fix{i}"
        write_tree(root, files)
        fixed = {**files, **fix_tree(root, unsafe_fixes=True, select=select)}
        assert join_files(fixed) == join_files(split_files(expected))
