"""Users choose what is fixed (issue 18): ``--fixable`` / ``--unfixable`` as in ruff (and
``fixable`` / ``unfixable`` in the config), ``--show-fixes`` listing what was fixed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import chdir
from trainaudit.cli import app

# Two TA302 renames (safe) and a clip before unscale_ (TA303, corrective).
SCRIPT = '''\
    import torch
    from torch.cuda.amp import GradScaler, autocast

    scaler = GradScaler()


    def train(model, loader, optimizer):
        for x, y in loader:
            with autocast():
                loss = model(x.cuda(), y.cuda())
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
'''


def _fix(root: Path, *args: str) -> tuple[int, str, str]:
    with chdir(root):
        result = CliRunner().invoke(app, ["fix", "train.py", "--no-cache", "--select", "TA3",
                                          *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = ["torch>=2.4"]\n')
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    return tmp_path


def test_show_fixes_lists_fixed_findings_per_file_and_code(project: Path) -> None:
    status, _, err = _fix(project, "--show-fixes", "--apply")
    assert status == 0
    assert ("Fixed 3 findings:\n- train.py:\n    2 × TA302 (deprecated-amp-api)\n"
            "    1 × TA303 (clip-before-unscale)\n") in err
    assert "scaler.unscale_(optimizer)" in (project / "train.py").read_text()


def test_show_fixes_without_apply_says_what_would_be_fixed(project: Path) -> None:
    status, out, err = _fix(project, "--show-fixes")
    assert status == 1 and "+++ b/train.py" in out
    assert "Would fix 3 findings:" in err


def test_unfixable_leaves_a_code_alone(project: Path) -> None:
    status, out, _ = _fix(project, "--unfixable", "TA302", "--show-fixes")
    assert status == 1
    assert "+        scaler.unscale_(optimizer)" in out
    assert "torch.amp" not in out


def test_fixable_restricts_and_the_most_specific_prefix_wins(project: Path) -> None:
    _, out, err = _fix(project, "--fixable", "TA3", "--unfixable", "TA303", "--show-fixes")
    assert "2 × TA302 (deprecated-amp-api)" in err and "TA303" not in err
    assert "unscale_" not in out
    status, _, err = _fix(project, "--fixable", "TA1")
    assert status == 0 and "Nothing to fix." in err


def test_config_fixable_lists(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = ["torch>=2.4"]\n'
        '[tool.trainaudit]\nunfixable = ["TA302"]\n')
    _, out, _ = _fix(project)
    assert "unscale_" in out and "torch.amp" not in out
    _, out, _ = _fix(project, "--fixable", "TA302")  # the flag replaces `fixable`, not `unfixable`
    assert "torch.amp" not in out and "unscale_" not in out


def test_unknown_code_is_a_usage_error(project: Path) -> None:
    status, _, err = _fix(project, "--unfixable", "TA999")
    assert status == 2 and "--unfixable: 'TA999' matches no rule code" in err
