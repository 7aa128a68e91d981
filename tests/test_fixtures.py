"""Every fixture case under fixtures/ gives exactly its expected findings,
and every codemod pair X.in.py gives exactly X.out.py.

Layout (see fixtures/README.md):
- ``fixtures/<family>/<case>.py`` + ``<case>.expected``: one file;
- ``fixtures/<family>/<case>/`` + ``expected.txt``: several files (a data set and a trainer...);
- ``fixtures/<family>/codemods/<X>.in.py`` → ``<X>.out.py`` (feature fixes on unless the
  first line says ``# fix: safe-only``).
Expected lines are ``[path:]LINE:COL CODE``; an empty file means clean. A family
folder may hold a ``SELECT`` file (e.g. ``TA1``): its cases are checked with only
those rules, so other families' findings do not belong in its expectations.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import check_tree, fix_tree, found

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _cases() -> list[Path]:
    cases = []
    for family in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        for item in sorted(family.iterdir()):
            if item.name == "codemods":
                continue
            if (item.is_dir() and (item / "expected.txt").exists()) or (item.suffix == ".py" and item.with_suffix(".expected").exists()):
                cases.append(item)
    return cases


def _codemods() -> list[Path]:
    return sorted(FIXTURES.glob("*/codemods/*.in.py"))


def _select(case: Path) -> dict[str, object]:
    family = case.parent if case.is_file() or case.parent.name != "fixtures" else case
    while family.parent != FIXTURES:
        family = family.parent
    select = family / "SELECT"
    if select.exists():
        return {"select": tuple(select.read_text().split())}
    return {}


def _parse_expected(text: str, default_path: str) -> set[tuple[str, int, int, str]]:
    result = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where, code = line.split()
        parts = where.split(":")
        path = parts[0] if len(parts) == 3 else default_path
        result.add((path, int(parts[-2]), int(parts[-1]), code))
    return result


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_findings(case: Path, tmp_path: Path) -> None:
    if case.is_dir():
        shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("expected.txt"))
        expected = _parse_expected((case / "expected.txt").read_text(), "")
    else:
        (tmp_path / "case").mkdir()
        shutil.copy(case, tmp_path / "case" / case.name)
        expected = _parse_expected(case.with_suffix(".expected").read_text(), case.name)
    assert found(check_tree(tmp_path / "case", **_select(case))) == expected


@pytest.mark.parametrize("pair", _codemods(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_codemod_pair(pair: Path, tmp_path: Path) -> None:
    source = pair.read_text()
    target = pair.with_name(pair.name.replace(".in.py", ".out.py")).read_text()
    unsafe = not source.startswith("# fix: safe-only")
    (tmp_path / "train.py").write_text(source)
    select = _select(pair.parent)
    fixed = fix_tree(tmp_path, unsafe_fixes=unsafe, **select)
    assert fixed.get("train.py", source) == target
    # Idempotent: fixing the output changes nothing.
    (tmp_path / "train.py").write_text(target)
    assert fix_tree(tmp_path, unsafe_fixes=unsafe, **select) == {}
