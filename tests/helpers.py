"""Shared test helpers: run the checker and the fixer on files written to a folder."""

from __future__ import annotations

import ast
import os
import re
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from trainaudit.config import Config
from trainaudit.discover import discover
from trainaudit.engine import CheckResult, check_files
from trainaudit.fixes.apply import fix_files
from trainaudit.model.loops import TrainingLoop, find_training_loops
from trainaudit.model.module import ModuleFacts
from trainaudit.registry import all_options

FILE_MARKER = re.compile(r"^# --- file: (?P<path>\S+) ---$", re.MULTILINE)


@contextmanager
def chdir(folder: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def split_files(block: str, default_name: str = "train.py") -> dict[str, str]:
    """Split a code block into files at ``# --- file: path ---`` lines."""
    marks = list(FILE_MARKER.finditer(block))
    if not marks:
        return {default_name: block}
    files = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else len(block)
        files[mark.group("path")] = block[mark.end() + 1 : end]
    return files


def join_files(files: Mapping[str, str]) -> str:
    if list(files) == ["train.py"]:
        return files["train.py"]
    return "".join(f"# --- file: {name} ---\n{text}" for name, text in sorted(files.items()))


def write_tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def config(**changes: object) -> Config:
    """The default config with every rule selected, advice included (the rule tests'
    view; the default selection is tested in test_default_selection.py)."""
    return Config(select=("ALL",), options=all_options(), root=Path.cwd()).with_overrides(**changes)


def check_tree(root: Path, **changes: object) -> CheckResult:
    """Check every file under ``root`` with the default config, paths relative to root."""
    with chdir(root):
        cfg = config(**changes)
        files, problems = discover([Path(".")], cfg)
        assert not problems
        return check_files(files, cfg, jobs=1)


def found(result: CheckResult) -> set[tuple[str, int, int, str]]:
    return {(f.path, f.line, f.column, f.code) for f in result.findings}


def codes(result: CheckResult) -> list[str]:
    return sorted(f.code for f in result.findings)


def fix_tree(root: Path, *, unsafe_fixes: bool = True, **changes: object) -> dict[str, str]:
    """Fix every file under ``root`` in memory; returns the fixed text of each changed file."""
    with chdir(root):
        cfg = config(**changes)
        files, _ = discover([Path(".")], cfg)
        run = fix_files(files, cfg, unsafe_fixes=unsafe_fixes)
        assert not run.errors, run.errors
        return {c.file.display: c.fixed for c in run.changes}


def only_training_loop(source: str) -> TrainingLoop:
    """The one training loop of a source text (dedented) read as ``train.py``."""
    text = textwrap.dedent(source)
    loops = find_training_loops(ModuleFacts("train.py", "train", text, ast.parse(text)))
    assert len(loops) == 1
    return loops[0]
