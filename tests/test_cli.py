"""The CI-facing command line: exit codes, the JSON contract (SPEC §3), GitHub annotations,
stdin mode, ``fix --diff``, and the progress bar / summary line on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainaudit.cli import app

ROLL = (
    "import torch\n"
    "import torch.nn.functional as F\n"
    "\n"
    "\n"
    "def loss_fn(logits, input_ids):\n"
    "    labels = torch.roll(input_ids, -1, dims=1)\n"
    "    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))\n"
)
AMP = "import torch\n\nscaler = torch.cuda.amp.GradScaler()\n"  # TA302, a warning
CLEAN = "import torch\n\n\ndef add(a, b):\n    return torch.add(a, b)\n"

runner = CliRunner()


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "roll.py").write_text(ROLL)
    (tmp_path / "amp.py").write_text(AMP)
    (tmp_path / "clean.py").write_text(CLEAN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- exit codes ----------------------------------------------------------------------

@pytest.mark.parametrize(("args", "code"), [
    (["clean.py"], 0),
    (["src/roll.py"], 1),                              # an error
    (["amp.py"], 1),                                   # a warning fails by default
    (["amp.py", "--fail-on", "error"], 0),
    (["src/roll.py", "--fail-on", "error"], 1),
    (["clean.py", "--fail-on", "info"], 0),
    (["src/roll.py", "--exit-zero"], 0),
    (["src/roll.py", "--ignore", "TA101"], 0),
    (["src/roll.py", "--select", "TA3"], 0),
    (["missing.py"], 2),                               # no such path
    (["missing.py", "--exit-zero"], 2),                # --exit-zero does not hide errors
    (["clean.py", "--select", "TA999"], 2),            # a selector that matches nothing
    (["clean.py", "--fail-on", "fatal"], 2),
])
def test_exit_codes(tree: Path, args: list[str], code: int) -> None:
    assert invoke("check", *args, "--no-cache")[0] == code


def test_config_error_exits_2(tree: Path) -> None:
    (tree / "pyproject.toml").write_text("[tool.trainaudit]\nselekt = ['TA1']\n")
    status, _, err = invoke("check", "clean.py", "--no-cache")
    assert status == 2
    assert "selekt" in err


# -- formats ---------------------------------------------------------------------------

def test_json_shape(tree: Path) -> None:
    status, out, _ = invoke("check", ".", "--format", "json", "--no-cache")
    assert status == 1
    data = json.loads(out)  # exactly one JSON object on stdout
    assert set(data) == {"version", "findings", "summary"}
    assert data["version"] == 1
    assert data["summary"] == {"files_seen": 3, "files_checked": 2, "findings": 2}
    by_code = {f["code"]: f for f in data["findings"]}
    assert set(by_code) == {"TA101", "TA302"}
    roll = by_code["TA101"]
    assert set(roll) == {"code", "name", "severity", "path", "line", "column", "end_line",
                         "end_column", "message", "fix", "related"}
    assert (roll["name"], roll["severity"], roll["fix"]) == ("circular-label-shift", "error", "corrective")
    assert (roll["path"], roll["line"], roll["column"]) == ("src/roll.py", 6, 14)
    assert (roll["end_line"], roll["end_column"]) == (6, 47)
    assert roll["related"] == [{"path": "src/roll.py", "line": 7, "column": 12,
                                "message": "the loss that trains on the wrapped position"}]
    amp = by_code["TA302"]
    assert (amp["path"], amp["line"], amp["column"], amp["severity"], amp["fix"]) == \
        ("amp.py", 3, 10, "warning", "safe")


def test_json_clean_run(tree: Path) -> None:
    status, out, _ = invoke("check", "clean.py", "--format", "json", "--no-cache")
    assert status == 0
    assert json.loads(out) == {"version": 1, "findings": [],
                               "summary": {"files_seen": 1, "files_checked": 0, "findings": 0}}


def test_github_annotations(tree: Path) -> None:
    status, out, _ = invoke("check", ".", "--format", "github", "--no-cache")
    assert status == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "::warning file=amp.py,line=3,col=10,endLine=3,endColumn=37,"
        "title=TA302 deprecated-amp-api::TA302 `torch.cuda.amp.GradScaler` is deprecated")
    assert lines[1].startswith(
        "::error file=src/roll.py,line=6,col=14,endLine=6,endColumn=47,"
        "title=TA101 circular-label-shift::TA101 `labels` is made with a circular roll")


def test_github_escapes_properties_and_data(tree: Path) -> None:
    from trainaudit.diagnostics import Finding, Severity, Span
    from trainaudit.engine import CheckResult
    from trainaudit.report.formats import render_github

    finding = Finding("TA101", "circular-label-shift", Severity.ERROR, "a,b:c.py",
                      Span(1, 2, 1, 3), "100% wrong\nreally")
    text = render_github(CheckResult([finding], 1, 1))
    assert text == ("::error file=a%2Cb%3Ac.py,line=1,col=2,endLine=1,endColumn=3,"
                    "title=TA101 circular-label-shift::TA101 100%25 wrong%0Areally")


# -- stdin -----------------------------------------------------------------------------

def test_stdin_with_filename(tree: Path) -> None:
    status, out, _ = invoke("check", "-", "--stdin-filename", "src/editor.py", "--format", "json",
                            stdin=ROLL)
    assert status == 1
    findings = json.loads(out)["findings"]
    assert [(f["code"], f["path"], f["line"]) for f in findings] == [("TA101", "src/editor.py", 6)]


def test_stdin_default_name_and_text_format(tree: Path) -> None:
    status, out, _ = invoke("check", "-", stdin=AMP)
    assert status == 1
    assert out.startswith("stdin.py:3:10: TA302")
    assert "scaler = torch.cuda.amp.GradScaler()" in out  # the source line comes from stdin


def test_stdin_clean_and_not_cached(tree: Path) -> None:
    assert invoke("check", "-", "--stdin-filename", "x.py", stdin=CLEAN)[0] == 0
    assert not (tree / ".trainaudit_cache").exists()


def test_stdin_cannot_mix_with_paths(tree: Path) -> None:
    assert invoke("check", "-", "clean.py", stdin=CLEAN)[0] == 2


def test_fix_stdin_prints_fixed_source(tree: Path) -> None:
    status, out, _ = invoke("fix", "-", "--stdin-filename", "amp.py", stdin=AMP)
    assert status == 0
    assert out == 'import torch\n\nscaler = torch.amp.GradScaler("cuda")\n'


# -- fix --diff ------------------------------------------------------------------------

def test_fix_diff_shows_and_does_not_write(tree: Path) -> None:
    status, out, _ = invoke("fix", "amp.py", "--diff")
    assert status == 1
    assert "--- a/amp.py\n+++ b/amp.py\n" in out
    assert '-scaler = torch.cuda.amp.GradScaler()\n+scaler = torch.amp.GradScaler("cuda")\n' in out
    assert (tree / "amp.py").read_text() == AMP


def test_fix_diff_nothing_to_fix(tree: Path) -> None:
    status, out, err = invoke("fix", "clean.py", "--diff")
    assert (status, out) == (0, "")
    assert "Nothing to fix" in err


def test_fix_apply_then_check_passes(tree: Path) -> None:
    assert invoke("fix", ".", "--apply")[0] == 0
    assert invoke("check", ".", "--no-cache")[0] == 0
    assert invoke("fix", ".", "--diff")[0] == 0  # idempotent


# -- progress and the summary line on a terminal -------------------------------------

def _run_with_tty_stderr(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run the real CLI with stderr on a pseudo-terminal and stdout on a pipe."""
    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "trainaudit", *args], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = process.stdout.read().decode() if process.stdout else ""
    status = process.wait()
    os.close(main)
    return status, stdout, b"".join(chunks).decode(errors="replace")


def test_summary_line_on_a_terminal_only(tree: Path) -> None:
    status, out, err = _run_with_tty_stderr(["check", ".", "--format", "json", "--no-cache"], tree)
    assert status == 1
    assert json.loads(out)["summary"]["findings"] == 2
    assert "trainaudit: 2 findings; 3 files seen, 2 checked, 0 cached [" in err
    piped = subprocess.run([sys.executable, "-m", "trainaudit", "check", ".", "--format", "json",
                            "--no-cache"], cwd=tree, capture_output=True, text=True)
    assert piped.returncode == 1
    assert piped.stderr == ""  # pipes and files get the data only


def test_progress_bar_for_big_trees_on_a_terminal(tree: Path) -> None:
    many = tree / "many"
    many.mkdir()
    for i in range(320):
        (many / f"m{i:03}.py").write_text(CLEAN if i % 2 else AMP)
    status, _, err = _run_with_tty_stderr(["check", "many", "--format", "json", "--no-cache"], tree)
    assert status == 1
    assert "checking" in err and "/320" in err
    status, _, err = _run_with_tty_stderr(["check", "src", "--format", "json", "--no-cache"], tree)
    assert status == 1
    assert "checking" not in err  # 1 file: no bar
    assert "trainaudit: 1 finding; 1 files seen, 1 checked" in err
