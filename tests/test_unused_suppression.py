"""TA002 unused-suppression: which directives are judged, the findings, and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import check_tree, fix_tree, found, write_tree
from trainaudit.cli import app
from trainaudit.engine import CheckResult

SOURCE = (
    "import torch\n"
    "\n"
    "scaler = torch.cuda.amp.GradScaler()  # noqa: TA302\n"            # used
    "other = torch.amp.GradScaler('cuda')  # noqa: TA302, E501\n"      # TA302 unused
    "third = torch.amp.GradScaler('cuda')  # trainaudit: ignore[TA302, TA303]\n"
    "note = '# noqa: TA302'\n"                                         # a string
    "keep = 1  # noqa: E501\n"                                         # not ours
    "bare = 2  # noqa\n"                                               # bare: not judged
    "last = 3  # noqa: TA302 reason why\n"
    "# noqa: TA101\n"                                                  # a project rule
)
FIXED = (
    "import torch\n"
    "\n"
    "scaler = torch.cuda.amp.GradScaler()  # noqa: TA302\n"
    "other = torch.amp.GradScaler('cuda')  # noqa: E501\n"
    "third = torch.amp.GradScaler('cuda')\n"
    "note = '# noqa: TA302'\n"
    "keep = 1  # noqa: E501\n"
    "bare = 2  # noqa\n"
    "last = 3  # reason why\n"
)


def ta002(result: CheckResult) -> set[tuple[int, int]]:
    return {(line, col) for _, line, col, code in found(result) if code == "TA002"}


def test_findings_in_a_walked_tree(tmp_path: Path) -> None:
    write_tree(tmp_path, {"amp.py": SOURCE})
    result = check_tree(tmp_path)
    assert found(result) == {("amp.py", 4, 39, "TA002"), ("amp.py", 5, 39, "TA002"),
                             ("amp.py", 9, 11, "TA002"), ("amp.py", 10, 1, "TA002")}
    messages = {f.line: f.message for f in result.findings}
    assert messages[4] == ("`# noqa: TA302, E501` suppresses nothing: no TA302 finding on "
                           "this line. Remove the unused code(s).")
    assert "no TA302, TA303 finding" in messages[5]


def test_fix_removes_unused_codes_and_comments(tmp_path: Path) -> None:
    write_tree(tmp_path, {"amp.py": SOURCE})
    assert fix_tree(tmp_path, unsafe_fixes=False) == {"amp.py": FIXED}
    write_tree(tmp_path, {"amp.py": FIXED})
    assert ta002(check_tree(tmp_path)) == set()  # and the fix is idempotent


@pytest.mark.parametrize(("changes", "expected"), [
    ({"select": ("TA002",)}, set()),                        # TA302 and TA101 not selected
    ({"select": ("TA002", "TA302")}, {(4, 39), (5, 39), (9, 11)}),
    ({"ignore": ("TA3",)}, {(10, 1)}),
    ({"per_file_ignores": {"amp.py": ("TA302", "TA303")}}, {(10, 1)}),
    ({"per_file_ignores": {"amp.py": ("TA002",)}}, set()),
])
def test_only_selected_codes_are_judged(tmp_path: Path, changes: dict[str, object],
                                        expected: set[tuple[int, int]]) -> None:
    write_tree(tmp_path, {"amp.py": SOURCE})
    assert ta002(check_tree(tmp_path, **changes)) == expected


def test_cross_file_codes_are_not_judged_in_files_given_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, {"amp.py": SOURCE})
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    alone = runner.invoke(app, ["check", "amp.py", "--no-cache", "--format", "github"])
    walked = runner.invoke(app, ["check", ".", "--no-cache", "--format", "github"])
    assert "line=10," not in alone.stdout  # TA101 is a cross-file rule
    assert "line=4," in alone.stdout       # TA302 is judged in the file alone
    assert "line=10," in walked.stdout
    assert alone.exit_code == walked.exit_code == 0  # info does not fail the default gate


def test_used_suppression_stays_used_through_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, {"amp.py": "import torch\n\ns = torch.cuda.amp.GradScaler()  # noqa: TA302\n"})
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = CliRunner().invoke(app, ["check", ".", "--format", "github"])
        assert (result.exit_code, result.stdout) == (0, "")


def test_suppressing_ta002_itself(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.py": "import torch\n\nx = torch.ones(1)  # noqa: TA302, TA002\n"})
    assert ta002(check_tree(tmp_path)) == set()
