"""Errors that never lose a run (issue 19, items 2 and 6): ``--force-exclude``, a bad
notebook cell, a missing path among several, fixes that cannot be written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_notebooks import METADATA, notebook
from trainaudit.cli import app

AMP = "import torch\n\nscaler = torch.cuda.amp.GradScaler()\n"  # TA302, safe fix
FIXED_AMP = 'import torch\n\nscaler = torch.amp.GradScaler("cuda")\n'
AMP_FINDING = ("TA302 [warning] `torch.cuda.amp.GradScaler` is deprecated since torch 2.4 "
               "(FutureWarning); use `torch.amp.GradScaler(\"cuda\", ...)`")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.trainaudit]\nexclude = ["legacy", "generated_*.py"]\n')
    for name in ("train.py", "legacy/old.py", "generated_amp.py", ".venv/lib/x.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(AMP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- --force-exclude -----------------------------------------------------------------------

EXPLICIT = ["train.py", "legacy/old.py", "generated_amp.py", ".venv/lib/x.py"]


def test_explicit_files_are_checked_without_force_exclude(tree: Path) -> None:
    status, out, _ = invoke("check", *EXPLICIT, "--no-cache", "--quiet")
    assert status == 1
    assert sorted(line.split(":")[0] for line in out.splitlines()) == sorted(EXPLICIT)


def test_force_exclude_applies_exclude_to_explicit_files(tree: Path) -> None:
    status, out, _ = invoke("check", *EXPLICIT, "--force-exclude", "--no-cache", "--quiet")
    assert status == 1
    assert out.splitlines() == [f"train.py:3:10: {AMP_FINDING}"]


def test_force_exclude_from_the_config_and_in_fix(tree: Path) -> None:
    (tree / "pyproject.toml").write_text(
        '[tool.trainaudit]\nexclude = ["legacy"]\nforce-exclude = true\n')
    status, _, _ = invoke("fix", "--apply", "legacy/old.py", "train.py", "--no-cache")
    assert status == 0
    assert (tree / "train.py").read_text() == FIXED_AMP
    assert (tree / "legacy/old.py").read_text() == AMP  # excluded: never fixed


def test_force_exclude_with_only_excluded_files_checks_nothing(tree: Path) -> None:
    status, out, _ = invoke("check", "legacy/old.py", "--force-exclude", "--no-cache", "-q")
    assert (status, out) == (0, "")


# -- a missing path among several ----------------------------------------------------------

def test_missing_path_is_reported_and_the_rest_checked(tree: Path) -> None:
    status, out, err = invoke("check", "missing/", "train.py", "--no-cache", "--quiet")
    assert status == 2
    assert out.splitlines() == [f"train.py:3:10: {AMP_FINDING}"]
    assert "error: missing: no such file or directory" in err.replace("\n", " ")


def test_missing_path_in_fix_apply_still_fixes_the_rest(tree: Path) -> None:
    status, _, err = invoke("fix", "--apply", "nope.py", "train.py", "--no-cache")
    assert status == 2
    assert (tree / "train.py").read_text() == FIXED_AMP
    assert "nope.py: no such file or directory" in err


# -- fix --apply on files it cannot write --------------------------------------------------

def test_read_only_file_is_refused_and_the_others_fixed(tree: Path) -> None:
    (tree / "other.py").write_text(AMP)
    (tree / "train.py").chmod(0o444)
    status, _, err = invoke("fix", "--apply", "train.py", "other.py", "--no-cache")
    assert status == 2
    assert "train.py: not fixed: the file is read-only" in err
    assert (tree / "train.py").read_text() == AMP
    assert stat.S_IMODE((tree / "train.py").stat().st_mode) == 0o444
    assert (tree / "other.py").read_text() == FIXED_AMP
    assert "Traceback" not in err


def test_check_fix_on_a_read_only_file_exits_2(tree: Path) -> None:
    (tree / "train.py").chmod(0o444)
    status, _, err = invoke("check", "--fix", "train.py", "--no-cache")
    assert status == 2
    assert "train.py: not fixed: the file is read-only" in err
    assert (tree / "train.py").read_text() == AMP


def test_fix_keeps_mode_and_owner(tree: Path) -> None:
    (tree / "train.py").chmod(0o640)
    before = (tree / "train.py").stat()
    status, _, _ = invoke("fix", "--apply", "train.py", "--no-cache")
    after = (tree / "train.py").stat()
    assert status == 0
    assert (tree / "train.py").read_text() == FIXED_AMP
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (
        0o640, before.st_uid, before.st_gid)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_writable_file_in_a_read_only_folder_is_fixed_in_place(tree: Path) -> None:
    folder = tree / "locked"
    folder.mkdir()
    (folder / "train.py").write_text(AMP)
    folder.chmod(0o555)
    try:
        status, _, err = invoke("fix", "--apply", "locked/train.py", "--no-cache")
    finally:
        folder.chmod(0o755)
    assert (status, err.count("Traceback")) == (0, 0)
    assert (folder / "train.py").read_text() == FIXED_AMP


# -- a notebook cell that does not parse ---------------------------------------------------

def test_bad_cell_is_ta001_there_and_the_other_cells_are_analysed(tree: Path) -> None:
    cells = [
        {"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [],
         "source": ["import torch\n"]},
        {"cell_type": "code", "execution_count": 2, "metadata": {}, "outputs": [],
         "source": ["def broken(:\n", "    pass\n"]},
        {"cell_type": "code", "execution_count": 3, "metadata": {}, "outputs": [],
         "source": ["scaler = torch.cuda.amp.GradScaler()\n"]},
    ]
    (tree / "nb.ipynb").write_text(notebook(cells, METADATA))
    for _ in range(2):  # the second run reads the cache
        status, out, _ = invoke("check", "nb.ipynb", "--quiet")
        assert status == 1
        assert out.splitlines() == [
            "nb.ipynb:cell 2:1:12: TA001 [error] syntax error: invalid syntax",
            f"nb.ipynb:cell 3:1:10: {AMP_FINDING}",
        ]
    status, out, _ = invoke("check", "nb.ipynb", "--format", "json", "--no-cache")
    codes = [(f["code"], f["cell"], f["line"]) for f in json.loads(out)["findings"]]
    assert codes == [("TA001", 2, 1), ("TA302", 3, 1)]


def test_fix_leaves_a_notebook_with_a_bad_cell_alone(tree: Path) -> None:
    cells = [
        {"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [],
         "source": ["import torch\n", "scaler = torch.cuda.amp.GradScaler()\n"]},
        {"cell_type": "code", "execution_count": 2, "metadata": {}, "outputs": [],
         "source": ["x = (\n"]},
    ]
    text = notebook(cells, METADATA)
    (tree / "nb.ipynb").write_text(text)
    status, _, err = invoke("fix", "--apply", "nb.ipynb", "--no-cache")
    assert (status, "Traceback" in err, "internal error" in err) == (1, False, False)
    assert (tree / "nb.ipynb").read_text() == text


def test_shell_line_as_a_loop_body_is_python(tree: Path) -> None:
    # `for url in urls:` / `  !wget {url}` is a valid IPython cell (issue 19: in a public
    # notebook it was TA001, the body left as a comment).
    cells = [
        {"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [],
         "source": ["import torch\n", "for url in ['a', 'b']:\n", "  !wget \"{url}\"\n"]},
        {"cell_type": "code", "execution_count": 2, "metadata": {}, "outputs": [],
         "source": ["scaler = torch.cuda.amp.GradScaler()\n"]},
    ]
    (tree / "nb.ipynb").write_text(notebook(cells, METADATA))
    status, out, _ = invoke("check", "nb.ipynb", "--quiet", "--no-cache")
    assert (status, out.splitlines()) == (1, [f"nb.ipynb:cell 2:1:10: {AMP_FINDING}"])
