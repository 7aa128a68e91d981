"""The flow model parses a module one definition at a time from phase 1's outline: every
definition must come out as the whole-file parse has it (same nodes, same positions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainaudit.model.flow.outline import definitions_in, outline_of
from trainaudit.model.flow.program import FlowModule, FlowSource
from trainaudit.model.module import physical_lines
from trainaudit.model.project import ModuleSummary

ROOT = Path(__file__).resolve().parent.parent

TRICKY = (
    "import torch\r\n"
    "\r\n"
    "@torch.no_grad()\r\n"
    "def evaluate(model):\r\n"
    "    return model(1)\r\n"
    "\x0c\r\n"  # a form feed: str.splitlines would count one line too many
    "class Trainer:\r\n"
    "\tscale: int = 2\r\n"
    "\tif True:\r\n"
    "\t\tdef step(self, x):\r\n"
    "\t\t\tdef inner(y):\r\n"
    "\t\t\t\treturn y\r\n"
    "\t\t\treturn inner(x)  # trailing comment\r\n"
    "\tclass Config:\r\n"
    "\t\tdef make(self): return 'é'\r\n"
    "try:\r\n"
    "    def fast(): return 1\r\n"
    "except ImportError:\r\n"
    "    def fast(): return 2\r\n"
    "x = fast(); y = '''a\r\n"
    "def not_a_definition(): pass\r\n"
    "'''\r\n"
    "def last(a,\r\n"
    "         b): return a + b"
)


def _module(source: str, path: str = "m.py") -> FlowModule:
    tree = ast.parse(source)
    flow = FlowSource(False, (), outline=outline_of(tree))
    return FlowModule(ModuleSummary(path, "m", frozenset(), {}), flow, source)


def _same_as_whole_file(source: str) -> int:
    whole = definitions_in(ast.parse(source).body)
    module = _module(source)
    for qualname, expected in whole.items():
        assert module.has_definition(qualname), qualname
        assert module.defines_class(qualname) == isinstance(expected, ast.ClassDef)
        got = module.definition(qualname)
        assert got is not None, qualname
        if isinstance(expected, ast.ClassDef):  # members are parsed on their own: stubs here
            assert (got.lineno, got.col_offset, got.end_lineno, got.end_col_offset) == (
                expected.lineno, expected.col_offset, expected.end_lineno, expected.end_col_offset)
            assert [ast.dump(b) for b in got.bases] == [ast.dump(b) for b in expected.bases]
        else:
            assert ast.dump(got, include_attributes=True) == ast.dump(expected, include_attributes=True)
    assert not module.has_definition("not_a_definition")
    return len(whole)


def test_tricky_layout_parses_definition_by_definition() -> None:
    assert _same_as_whole_file(TRICKY) == 8
    module = _module(TRICKY)
    fast = module.function("fast")
    assert fast is not None and ast.literal_eval(fast.body[0].value) == 2  # the last one wins


def test_skeleton_keeps_the_module_body_and_line_numbers() -> None:
    module = _module(TRICKY)
    body = module.facts.tree.body
    names = [s.name for s in ast.walk(module.facts.tree)
             if isinstance(s, ast.FunctionDef | ast.ClassDef)]
    assert names == ["evaluate", "Trainer", "last", "fast", "fast"]
    assign = next(s for s in body if isinstance(s, ast.Assign))
    assert assign.lineno == 20 and module.text(assign.value) == "fast()"
    assert len(physical_lines(TRICKY)) == 24


@pytest.mark.parametrize("folder", ["fixtures", "reference_impl", "trainaudit"])
def test_every_checked_in_file_parses_the_same(folder: str) -> None:
    count = 0
    for path in sorted((ROOT / folder).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        try:
            ast.parse(source)
        except SyntaxError:
            continue  # fixtures of TA001
        count += _same_as_whole_file(source)
    assert count > 30


def test_project_reads_the_analysed_text_again_or_nothing(tmp_path: Path) -> None:
    from trainaudit.model.project import Project
    from trainaudit.sources import text_check

    path = tmp_path / "train.py"
    path.write_text("x = 1\n", encoding="utf-8")
    summary = ModuleSummary("train.py", "train", frozenset(), {}, file=str(path),
                            text_check=text_check("x = 1\n"))
    assert Project([summary]).text_of(summary) == "x = 1\n"
    assert Project([summary], {"train.py": "y = 2\n"}).text_of(summary) == "y = 2\n"  # a buffer
    path.write_text("x = 2\n", encoding="utf-8")  # changed since phase 1: not that text
    assert Project([summary]).text_of(summary) is None
    path.unlink()
    assert Project([summary]).text_of(summary) is None


def test_a_double_shift_read_from_stdin_is_found() -> None:
    import subprocess
    import sys

    source = (ROOT / "fixtures/labels/collator_class_hf_preshifted.py").read_text(encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "trainaudit", "check", "-", "--stdin-filename",
                           "collate.py", "--no-config", "--select", "TA102", "-q"],
                          input=source, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stdout.startswith("collate.py:12:53: TA102 [error]")
