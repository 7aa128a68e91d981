"""Config validation: every rule and fix option is checked for type and range, and a bad
value exits 2 naming the file and the key (issue 12, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainaudit.cli import app

CLEAN = "import torch\n\n\ndef add(a, b):\n    return torch.add(a, b)\n"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "clean.py").write_text(CLEAN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stderr


@pytest.mark.parametrize(("table", "line", "key"), [
    ("fix", "accumulation-steps = 0", "accumulation-steps"),
    ("fix", "accumulation-steps = -3", "accumulation-steps"),
    ("fix", "accumulation-steps = 2.5", "accumulation-steps"),
    ("fix", "accumulation-steps = true", "accumulation-steps"),
    ("fix", "accumulation-steps = '8'", "accumulation-steps"),
    ("fix", "autocast-dtype = 'float8'", "autocast-dtype"),
    ("fix", "autocast-dtype = 16", "autocast-dtype"),
    ("fix", "checkpointing-default = 1", "checkpointing-default"),
    ("fix", "ignore-index = '-100'", "ignore-index"),
    ("", "min-effective-batch = -5", "min-effective-batch"),
    ("", "min-effective-batch = 0", "min-effective-batch"),
    ("", "long-sequence-threshold = 0", "long-sequence-threshold"),
    ("", "long-sequence-threshold = 4096.0", "long-sequence-threshold"),
    ("", "unsafe-fixes = 'yes'", "unsafe-fixes"),
    ("", "per-file-ignores = {'tests/*' = [101]}", "per-file-ignores"),
])
@pytest.mark.parametrize("command", ["check", "fix"])
def test_bad_value_exits_2_naming_file_and_key(tree: Path, command: str, table: str,
                                               line: str, key: str) -> None:
    header = "[tool.trainaudit.fix]" if table else "[tool.trainaudit]"
    (tree / "pyproject.toml").write_text(f"{header}\n{line}\n")
    status, err = run(command, "clean.py")
    assert status == 2
    assert "pyproject.toml" in err
    assert f"`{key}`" in err


@pytest.mark.parametrize("line", [
    "accumulation-steps = 1", "accumulation-steps = 16", "autocast-dtype = 'float16'",
    "ignore-index = 0", "checkpointing-default = false",
])
def test_good_fix_values_are_accepted(tree: Path, line: str) -> None:
    (tree / "pyproject.toml").write_text(f"[tool.trainaudit.fix]\n{line}\n")
    assert run("check", "clean.py", "--no-cache")[0] == 0


def test_trainaudit_toml_names_its_own_file(tree: Path) -> None:
    (tree / "trainaudit.toml").write_text("[fix]\naccumulation-steps = 0\n")
    status, err = run("check", "clean.py", "--no-cache")
    assert status == 2
    assert "trainaudit.toml: [fix] `accumulation-steps` must be an integer >= 1 (got 0)" in err
