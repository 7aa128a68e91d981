"""Fixes lay out what they write and work on every file of a finding (issue 18, item 7):
generated lines fit the line length, a keyword joins any call layout cleanly, a deeply
nested expression does not stop a fixer, and ``fix`` on one file of a cross-file finding
fixes it as ``check`` of the project says it can."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import libcst as cst
import pytest
from typer.testing import CliRunner

from tests.helpers import chdir, fix_tree
from trainaudit.cli import app
from trainaudit.fixes.toolkit import add_keywords, append_args, keyword_arg

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize("pair", sorted(FIXTURES.glob("*/codemods/*.in.py")),
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_codemod_outputs_add_no_line_longer_than_88(pair: Path) -> None:
    # A long line the input had may be edited (a name renamed in it); no new one appears.
    # A trailing comment is the author's (a formatter leaves it too): code is measured.
    def long_lines(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines()
                if len(line.split("  # ")[0]) > 88]

    after = long_lines(pair.with_name(pair.name.replace(".in.py", ".out.py")))
    assert len(after) <= len(long_lines(pair)), after


def test_ddp_no_sync_fix_wraps_its_with_line(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "loops/codemods/ta205_gated_no_sync.in.py", tmp_path / "train.py")
    out = fix_tree(tmp_path, select=("TA205",))["train.py"]
    assert ("        with (\n"
            "            contextlib.nullcontext()\n"
            "            if (i + 1) % accumulation_steps == 0 or not hasattr(model, \"no_sync\")\n"
            "            else model.no_sync()\n"
            "        ):\n") in out


@pytest.mark.parametrize(("call", "expected"), [
    ("checkpoint(block, x)", "checkpoint(block, x, use_reentrant=False)"),
    ("checkpoint(\n    block, x\n)", "checkpoint(\n    block, x, use_reentrant=False\n)"),
    ("checkpoint(\n    block,\n    x\n)", "checkpoint(\n    block,\n    x,\n    use_reentrant=False\n)"),
    ("checkpoint(\n    block,\n    x,\n)", "checkpoint(\n    block,\n    x,\n    use_reentrant=False,\n)"),
    ("checkpoint(block, x,\n)", "checkpoint(block, x,\n    use_reentrant=False,\n)"),
    ("checkpoint(block,\n           x)", "checkpoint(block,\n           x,\n           use_reentrant=False)"),
    ("checkpoint(\n    block,\n    x,  # the input\n)",
     "checkpoint(\n    block,\n    x,  # the input\n    use_reentrant=False,\n)"),
    ("checkpoint(block, x  # the input\n)", "checkpoint(block, x, use_reentrant=False  # the input\n)"),
], ids=["one-line", "args-on-own-line", "one-a-line", "one-a-line-trailing-comma",
        "trailing-comma-then-break", "hanging-indent", "comment-after-last", "comment-before-paren"])
def test_keyword_joins_every_call_layout(call: str, expected: str) -> None:
    node = cst.parse_expression(call)
    assert isinstance(node, cst.Call)
    code = cst.Module([]).code_for_node
    assert code(append_args(node, [keyword_arg("use_reentrant", cst.Name("False"))])) == expected
    assert code(add_keywords(node, [("use_reentrant", "False")])) == expected


def test_a_400_term_expression_does_not_stop_a_fixer(tmp_path: Path) -> None:
    terms = " + ".join(f"w[{i}]" for i in range(400))
    (tmp_path / "train.py").write_text(textwrap.dedent(f'''\
        import torch
        from torch.cuda.amp import autocast


        def total(w):
            return {terms}


        def step(model, x):
            with autocast():
                return model(x)
        '''))
    out = fix_tree(tmp_path, select=("TA302",))["train.py"]
    assert 'with autocast("cuda"):' in out and f"return {terms}\n" in out


def _fixable(root: Path) -> list[tuple[str, str]]:
    with chdir(root):
        result = CliRunner().invoke(app, ["check", ".", "--format", "json", "--select", "TA102",
                                          "--no-cache"])
    return [(f["path"], f["fix"]) for f in json.loads(result.stdout)["findings"]]


@pytest.mark.parametrize("marker", ["pyproject.toml", None], ids=["project", "working-dir"])
def test_fix_on_one_file_of_a_cross_file_finding_fixes_it(tmp_path: Path,
                                                          marker: str | None) -> None:
    shutil.copytree(FIXTURES / "labels/cross_package", tmp_path / "proj",
                    ignore=shutil.ignore_patterns("expected.txt"))
    root = tmp_path / "proj"
    if marker:
        (root / marker).write_text('[project]\nname = "proj"\n')
    assert _fixable(root) == [("mypkg/data/text_data_loader.py", "corrective")]
    with chdir(root):
        result = CliRunner().invoke(app, ["fix", "mypkg/data/text_data_loader.py", "--no-cache",
                                          "--select", "TA102"])
    assert result.exit_code == 1, result.output
    assert "Nothing to fix" not in result.output
    assert "+++ b/mypkg/data/text_data_loader.py" in result.stdout
