"""Named files are checked in their project (issue 19, item 1): a cross-file finding
that involves a named file is reported though its other end was not named."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_precommit import CLEAN, DATA, TRAIN
from trainaudit.cli import app


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/__init__.py").write_text("")
    (tmp_path / "pkg/data.py").write_text(DATA)
    (tmp_path / "pkg/train.py").write_text(TRAIN)
    (tmp_path / "pkg/util.py").write_text(CLEAN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def findings(*args: str) -> tuple[int, list[tuple[str, str, int]], dict[str, int]]:
    status, out, _ = invoke("check", *args, "--format", "json", "--no-cache",
                            "--select", "TA1")
    report = json.loads(out)
    return (status, [(f["code"], f["path"], f["line"]) for f in report["findings"]],
            report["summary"])


DOUBLE_SHIFT = ("TA102", "pkg/data.py", 14)


def test_the_trainer_alone_sees_the_data_sets_shift(project: Path) -> None:
    status, found, summary = findings("pkg/train.py")
    assert (status, found) == (1, [DOUBLE_SHIFT])
    assert summary == {"files_seen": 1, "files_checked": 1, "findings": 1}


def test_the_data_set_alone_sees_the_trainers_shift(project: Path) -> None:
    assert findings("pkg/data.py")[:2] == (1, [DOUBLE_SHIFT])


def test_a_file_the_finding_does_not_involve_reports_nothing(project: Path) -> None:
    assert findings("pkg/util.py")[:2] == (0, [])


def test_no_project_context_checks_the_named_files_alone(project: Path) -> None:
    assert findings("pkg/train.py", "--no-project-context")[:2] == (0, [])


def test_the_context_is_the_config_root_and_honours_exclude(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.trainaudit]\nexclude = ["pkg/data.py"]\n')
    assert findings("pkg/train.py")[:2] == (0, [])


def test_without_git_or_config_the_working_directory_is_the_context(project: Path) -> None:
    subprocess.run(["rm", "-rf", str(project / ".git")], check=True)
    assert findings("pkg/train.py")[:2] == (1, [DOUBLE_SHIFT])


def test_a_named_file_outside_the_working_directory_has_no_context(
        project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    subprocess.run(["rm", "-rf", str(project / ".git")], check=True)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "train.py").write_text(TRAIN)
    assert findings(str(elsewhere / "train.py"))[:2] == (0, [])
