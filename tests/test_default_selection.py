"""Advice out of the gate (issue 19, item 4): the default selection holds the rules that
are right everywhere; the advice rules run when selected, and a last line says how many
advice findings were not shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_advice_severity import GPU_ONLY_SMALL_BATCH
from trainaudit.catalogue import CATALOGUE
from trainaudit.cli import app
from trainaudit.config import Config

ADVICE = ["TA103", "TA201", "TA301", "TA306", "TA401", "TA504", "TA505"]

# A GPU training loop: no clipping (TA504), float32 (TA301), one optimizer step per
# small batch (TA201), and a deprecated AMP name (TA302, a warning: always shown).
LOOP = GPU_ONLY_SMALL_BATCH + "scaler_cls = torch.cuda.amp.GradScaler\n"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "train.py").write_text(LOOP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_advice_rules_are_the_ones_the_issue_names() -> None:
    assert sorted(info.code for info in CATALOGUE if info.advice) == ADVICE


def test_default_selection_is_every_rule_but_advice() -> None:
    enabled = Config().enabled_codes()
    assert enabled == {info.code for info in CATALOGUE} - set(ADVICE)
    assert Config(select=("ALL",)).enabled_codes() == {info.code for info in CATALOGUE}
    assert Config(extend_select=("TA504",)).enabled_codes() == enabled | {"TA504"}
    assert "TA504" in Config(select=("TA5",)).enabled_codes()  # a prefix selects its advice


def codes(*args: str) -> tuple[int, list[str]]:
    status, out, _ = invoke("check", ".", "--format", "json", "--no-cache", *args)
    return status, sorted(f["code"] for f in json.loads(out)["findings"])


def test_default_run_shows_no_advice_and_counts_it(tree: Path) -> None:
    assert codes() == (1, ["TA302"])
    status, out, _ = invoke("check", ".", "--no-cache")
    assert status == 1
    assert out.splitlines()[-1] == (
        "3 advice findings not shown (TA201, TA301, TA504): `--extend-select "
        "TA201,TA301,TA504` shows them, `select = [\"ALL\"]` every rule.")


def test_advice_runs_when_selected(tree: Path) -> None:
    assert codes("--extend-select", "TA504") == (1, ["TA302", "TA504"])
    assert codes("--select", "ALL") == (1, ["TA201", "TA301", "TA302", "TA504"])
    (tree / "pyproject.toml").write_text('[tool.trainaudit]\nselect = ["ALL"]\n')
    assert codes() == (1, ["TA201", "TA301", "TA302", "TA504"])
    (tree / "pyproject.toml").write_text('[tool.trainaudit]\nextend-select = ["TA301"]\n')
    assert codes() == (1, ["TA301", "TA302"])
    _, out, _ = invoke("check", ".", "--no-cache")
    assert out.splitlines()[-1].startswith("2 advice findings not shown (TA201, TA504)")


def test_no_advice_line_when_nothing_is_hidden_or_ignored(tree: Path) -> None:
    _, out, _ = invoke("check", ".", "--no-cache", "--select", "ALL")
    assert "not shown" not in out
    _, out, _ = invoke("check", ".", "--no-cache", "--ignore", "TA201,TA301")
    assert out.splitlines()[-1].startswith("1 advice finding not shown (TA504): "
                                           "`--extend-select TA504` shows it")
    _, out, _ = invoke("check", ".", "--no-cache", "--quiet")
    assert "not shown" not in out


def test_reference_trainer_selects_the_advice() -> None:
    config = Path(__file__).resolve().parent.parent / "reference_impl" / "trainaudit.toml"
    assert 'select = ["ALL"]' in config.read_text(encoding="utf-8")


def test_rules_mark_the_advice() -> None:
    status, out, _ = invoke("rules", "TA5", "--format", "json")
    assert status == 0
    assert [(row["code"], row["advice"]) for row in json.loads(out)] == [
        ("TA501", False), ("TA502", False), ("TA503", False), ("TA504", True), ("TA505", True)]
    status, out, _ = invoke("rules", "TA504")
    assert "info (advice)" in out
