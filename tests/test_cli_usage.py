"""The command line without rough edges (issue 12, item 8): explicit files that do not
parse, binary files, empty folders, ``check --fix``, ``fix`` flags and stdin diffs,
``rules`` formats and prefixes, ``explain``/``rules`` printed whole."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from trainaudit.cli import RULE_PAGES, app
from trainaudit.report.catalogue import print_page, print_rules

AMP = "import torch\n\nscaler = torch.cuda.amp.GradScaler()\n"  # TA302, safe fix
FIXED_AMP = 'import torch\n\nscaler = torch.amp.GradScaler("cuda")\n'
CLEAN = "import torch\n\n\ndef add(a, b):\n    return torch.add(a, b)\n"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "amp.py").write_text(AMP)
    (tmp_path / "clean.py").write_text(CLEAN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- files that do not parse ------------------------------------------------------------

def test_explicit_file_that_does_not_parse_is_ta001_without_training_words(tree: Path) -> None:
    (tree / "broken.py").write_text("def f(:\n    pass\n")
    for _ in range(2):  # the second run reads the cache
        status, out, _ = invoke("check", "broken.py")
        assert status == 1
        assert out.startswith("broken.py:1:7: TA001 [error] syntax error: invalid syntax\n")


def test_walked_file_without_training_words_is_still_skipped(tree: Path) -> None:
    (tree / "broken.py").write_text("def f(:\n    pass\n")
    status, out, _ = invoke("check", ".", "--select", "TA001", "--no-cache")
    assert (status, "broken.py" in out) == (0, False)


def test_binary_content_is_never_printed(tree: Path) -> None:
    (tree / "blob.py").write_bytes(b"\x00\x01\x1b[31mred\xff\xfe\n")
    status, out, _ = invoke("check", "blob.py", "--no-cache")
    assert status == 1
    assert out.splitlines()[0] == ("blob.py:1:1: TA001 [error] file cannot be read: "
                                   "invalid or missing encoding declaration")
    assert "\x00" not in out and "\x1b" not in out and "red" not in out and " | " not in out


def test_folder_without_python_files_says_so(tree: Path) -> None:
    (tree / "docs").mkdir()
    (tree / "docs" / "notes.txt").write_text("nothing here\n")
    status, _, err = invoke("check", "docs", "--no-cache")
    assert status == 0
    assert "warning: no Python files or notebooks found under docs" in err


# -- check --fix ------------------------------------------------------------------------

def test_check_fix_writes_and_reports_what_remains(tree: Path) -> None:
    status, out, err = invoke("check", "--fix", ".", "--no-cache")
    assert status == 0
    assert (tree / "amp.py").read_text() == FIXED_AMP
    assert "Fixed 1 file." in err
    assert "All checks passed." in out


def test_check_fix_leaves_feature_fixes_without_unsafe_fixes(tree: Path) -> None:
    loop = ("import torch\n\n\ndef train(model, loader, opt):\n    for x, y in loader:\n"
            "        loss = torch.nn.functional.mse_loss(model(x), y)\n        loss.backward()\n"
            "        opt.step()\n        opt.zero_grad()\n")
    (tree / "train.py").write_text(loop)
    status, out, _ = invoke("check", "--fix", "train.py", "--select", "TA504", "--no-cache")
    assert status == 0 and "TA504" in out  # info: reported, not fixed
    assert (tree / "train.py").read_text() == loop
    status, out, _ = invoke("check", "--fix", "--unsafe-fixes", "train.py", "--select", "TA504",
                            "--no-cache")
    assert status == 0 and "TA504" not in out
    assert "clip_grad_norm_" in (tree / "train.py").read_text()


def test_check_fix_on_stdin_prints_the_fixed_source(tree: Path) -> None:
    status, out, _ = invoke("check", "--fix", "-", "--stdin-filename", "amp.py", stdin=AMP)
    assert (status, out) == (0, FIXED_AMP)


# -- fix flags ----------------------------------------------------------------------------

def test_fix_stdin_honours_diff(tree: Path) -> None:
    status, out, _ = invoke("fix", "-", "--diff", "--stdin-filename", "amp.py", stdin=AMP)
    assert status == 1
    assert out.startswith("# amp.py: TA302: ")  # the fix's note, then the diff
    assert "\n--- a/amp.py\n+++ b/amp.py\n" in out
    assert '+scaler = torch.amp.GradScaler("cuda")\n' in out
    status, out, _ = invoke("fix", "-", "--diff", "--stdin-filename", "clean.py", stdin=CLEAN)
    assert (status, out) == (0, "")


def test_fix_exit_zero_and_quiet(tree: Path) -> None:
    status, out, err = invoke("fix", "amp.py", "--exit-zero", "--quiet", "--no-cache")
    assert status == 0
    assert out.startswith("--- a/amp.py\n")  # --quiet: no notes
    assert err == ""
    status, _, err = invoke("fix", "clean.py", "--quiet")
    assert (status, err) == (0, "")  # no "Nothing to fix."
    status, _, err = invoke("fix", "amp.py", "--apply", "--quiet", "--no-cache")
    assert (status, err) == (0, "")
    assert (tree / "amp.py").read_text() == FIXED_AMP


def test_fix_uses_the_cache_unless_told_not_to(tree: Path) -> None:
    assert invoke("fix", ".", "--no-cache")[0] == 1
    assert not (tree / ".trainaudit_cache").exists()
    assert invoke("fix", ".")[0] == 1
    assert (tree / ".trainaudit_cache").is_dir()


# -- rules and explain ---------------------------------------------------------------------

def test_rules_prefix_and_formats() -> None:
    status, out, _ = invoke("rules", "TA2", "--format", "json")
    assert status == 0
    assert [row["code"] for row in __import__("json").loads(out)] == [
        "TA201", "TA202", "TA203", "TA204", "TA205", "TA206"]
    assert invoke("rules", "--format", "yaml")[0] == 2
    assert invoke("rules", "TA9")[0] == 2


def test_rules_piped_prints_every_name_whole() -> None:
    status, out, _ = invoke("rules")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["code", "name", "severity", "fix", "finds"]
    assert ("TA205  ddp-accumulation-without-no-sync  warning           corrective  "
            "DDP + accumulation with an all-reduce on every micro-batch") in lines
    assert ("TA201  no-gradient-accumulation          warning (advice)  feature     "
            "optimizer stepped every micro-batch at a small batch size, no accumulation") in lines


def _terminal(width: int) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, force_terminal=True), buffer


def test_rules_table_on_a_wide_terminal_keeps_names_whole() -> None:
    console, buffer = _terminal(160)
    print_rules([("TA205", "ddp-accumulation-without-no-sync", "warning", "corrective",
                  "DDP + accumulation with an all-reduce on every micro-batch")], console)
    assert "ddp-accumulation-without-no-sync" in ANSI.sub("", buffer.getvalue())
    console, buffer = _terminal(60)  # too narrow for the table: plain lines
    print_rules([("TA205", "ddp-accumulation-without-no-sync", "warning", "corrective", "x")],
                console)
    assert "TA205  ddp-accumulation-without-no-sync  warning   corrective  x" in buffer.getvalue()


PAGES = sorted(RULE_PAGES.glob("TA*.md"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_piped_explain_is_the_whole_page(page: Path) -> None:
    status, out, _ = invoke("explain", page.stem.split("-", 1)[0])
    assert (status, out) == (0, page.read_text(encoding="utf-8"))


def test_explain_on_terminals_never_cuts_code() -> None:
    text = (RULE_PAGES / "TA201-no-gradient-accumulation.md").read_text(encoding="utf-8")
    code_lines = [line.strip() for block in re.findall(r"```python \w+\n(.*?)```", text, re.S)
                  for line in block.splitlines() if line.strip()]
    longest = max(len(line) for line in text.split("```")[1].splitlines())
    console, buffer = _terminal(longest + 4)
    print_page(text, console)
    shown = {line.strip() for line in ANSI.sub("", buffer.getvalue()).splitlines()}
    assert [line for line in code_lines if line not in shown] == []
    console, buffer = _terminal(40)  # narrower than the code: the Markdown as written
    print_page(text, console)
    assert buffer.getvalue() == text
