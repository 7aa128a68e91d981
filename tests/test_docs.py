"""What the docs promise about installing and pinning matches the package (issue 12, item 9)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from trainaudit import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_is_one_string() -> None:
    assert PYPROJECT["project"]["version"] == __version__ == "0.2.0"


def test_license_is_an_spdx_string() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    # A string license needs setuptools >= 77 (older ones reject it).
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


@pytest.mark.parametrize("name", ["docs/ci.md", ".pre-commit-hooks.yaml"])
def test_pre_commit_rev_is_pinned_with_autoupdate_freeze_not_a_tag(name: str) -> None:
    # No tag exists (issue 19): `rev: v0.2.0` made pre-commit exit 3. The config is
    # written with HEAD and pinned to a sha by `autoupdate --freeze`, which test_precommit runs.
    text = (REPO / name).read_text(encoding="utf-8")
    assert re.findall(r"^[#\s]*rev: (\S+)", text, re.MULTILINE) == ["HEAD"]
    assert "pre-commit autoupdate --freeze" in text


def test_no_install_from_an_index_or_a_url_that_does_not_exist() -> None:
    names = ("README.md", "docs/ci.md", ".pre-commit-hooks.yaml")
    texts = [(REPO / name).read_text(encoding="utf-8") for name in names]
    for text in texts:
        # "trainaudit @ git+..." names the source; a bare name means an index.
        assert not re.search(r"pip install ['\"]?trainaudit(?:\[\w+\])?['\"]?(?!\s*@)(?:\s|$)",
                             text)
        assert "github.com/trainaudit" not in text
    assert "pip install ./trainaudit" in texts[1]


def test_rule_pages_cite_public_sources() -> None:
    pages = sorted((REPO / "rules").glob("TA*.md"))
    assert [p.name for p in pages if "SPEC" in p.read_text(encoding="utf-8")] == []
