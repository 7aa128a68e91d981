"""Applying fixes to a set of files until nothing more changes, and writing them safely."""

from __future__ import annotations

import ast
import difflib
import os
import stat
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from trainaudit.config import Config
from trainaudit.diagnostics import Finding, FixClass
from trainaudit.discover import SourceFile
from trainaudit.engine import CheckResult, FileResult, ProjectPhase, check_files
from trainaudit.fixes import Fixer, FixResult, fix_priority, load_fixers
from trainaudit.fixes.cst import fit_new_lines, line_length
from trainaudit.notebook import (
    CellStarts,
    Notebook,
    cell_note,
    cell_starts,
    in_cells,
    is_notebook,
)
from trainaudit.sources import DecodeError, read_source, source_of

MAX_ROUNDS = 12


@dataclass
class FileChange:
    """A file's text before and after fixing, and what each fix said it did."""

    file: SourceFile
    original: str
    encoding: str
    fixed: str
    notes: list[str] = field(default_factory=list)
    # A notebook's JSON text as read; ``original`` and ``fixed`` are analysed sources.
    notebook: str | None = None
    # Findings the fixes removed, per code (``--show-fixes``).
    fixed_codes: dict[str, int] = field(default_factory=dict)

    def diff(self) -> str:
        if self.notebook is not None:
            return Notebook.parse(self.notebook).cell_diff(self.file.display, self.original,
                                                           self.fixed)
        return "".join(difflib.unified_diff(
            self.original.splitlines(keepends=True), self.fixed.splitlines(keepends=True),
            fromfile=f"a/{self.file.display}", tofile=f"b/{self.file.display}"))

    def output(self) -> str:
        """The fixed file's text: the source, or the notebook with its cells fixed."""
        if self.notebook is None:
            return self.fixed
        return Notebook.parse(self.notebook).with_source(self.fixed)


@dataclass
class FixRun:
    changes: list[FileChange]
    remaining: CheckResult
    errors: list[str] = field(default_factory=list)


def allowed_classes(unsafe_fixes: bool) -> frozenset[FixClass]:
    classes = {FixClass.SAFE, FixClass.CORRECTIVE}
    if unsafe_fixes:
        classes.add(FixClass.FEATURE)
    return frozenset(classes)


def fix_files(files: Sequence[SourceFile], config: Config, *, unsafe_fixes: bool,
              overlay: Mapping[str, str] | None = None,
              analyse: Callable[..., list[FileResult]] | None = None,
              project: ProjectPhase | None = None,
              context: Sequence[SourceFile] = ()) -> FixRun:
    """Apply fixes in rounds (one rule code per file per round), re-checking after each.

    ``context`` files are checked with ``files`` (cross-file facts) but never fixed, and
    their findings are not reported. ``analyse`` and ``project`` (the cache's phases) serve
    the first check only: later rounds check edited text, which is not on disk."""
    fixers = load_fixers()
    allowed = allowed_classes(unsafe_fixes)
    by_display = {f.display: f for f in files}
    texts: dict[str, str] = dict(overlay or {})
    originals: dict[str, tuple[str, str]] = {}
    notes: dict[str, list[str]] = defaultdict(list)
    errors: list[str] = []
    failed: set[tuple[str, str]] = set()

    notebooks: dict[str, str] = {}  # display -> the notebook's JSON text

    def load(display: str) -> str | None:
        if display not in texts:
            try:
                data = by_display[display].path.read_bytes()
                if is_notebook(display):
                    notebooks[display] = data.decode("utf-8")
                    texts[display], encoding = source_of(display, data), "utf-8"
                else:
                    texts[display], encoding = read_source(data)
            except (OSError, DecodeError, UnicodeDecodeError) as exc:
                errors.append(f"{display}: cannot read: {exc}")
                return None
            originals[display] = (texts[display], encoding)
        elif display not in originals:
            originals[display] = (texts[display], "utf-8")
        return texts[display]

    checked = [*files, *context]
    result = check_files(checked, config, overlay=texts, analyse=analyse, project=project,
                         place_in_cells=False)
    first = Counter((f.path, f.code) for f in result.findings)
    applied: set[tuple[str, str]] = set()
    for _ in range(MAX_ROUNDS):
        todo: dict[str, list[Finding]] = defaultdict(list)
        for finding in result.findings:
            if (finding.fix in allowed and finding.code in fixers and config.is_fixable(finding.code)
                    and (finding.path, finding.code) not in failed and finding.path in by_display):
                todo[finding.path].append(finding)
        changed = False
        for display, found in sorted(todo.items()):
            code = min((f.code for f in found), key=fix_priority)
            source = load(display)
            if source is None:
                continue
            try:  # a notebook with a cell that does not parse: TA001 says so, nothing to fix
                ast.parse(source)
            except SyntaxError:
                failed.update((display, f.code) for f in found)
                continue
            try:
                outcome = _deep(partial(_fixed, fixers[code], source,
                                        [f for f in found if f.code == code], config.fix_options))
            except Exception as exc:  # a broken fixer must not lose the file
                errors.append(f"internal error: fix {code} failed on {display}: {exc!r}")
                failed.add((display, code))
                continue
            if outcome.source == source:
                failed.add((display, code))
                continue
            try:
                ast.parse(outcome.source)
            except SyntaxError as exc:
                errors.append(f"{display}: fix {code} produced code that does not parse "
                              f"({exc.msg}, line {exc.lineno}); not applied")
                failed.add((display, code))
                continue
            if display in notebooks and _cells(outcome.source) != _cells(source):
                errors.append(f"{display}: fix {code} moved code across notebook cells; "
                              "not applied")
                failed.add((display, code))
                continue
            if display in notebooks:  # say where in the notebook, as findings do
                starts = cell_starts(source)
                outcome.notes = [cell_note(n, starts) for n in outcome.notes]
            texts[display] = outcome.source
            applied.add((display, code))
            notes[display].extend(f"{code}: {n}" for n in outcome.notes)
            changed = True
        if not changed:
            break
        result = check_files(checked, config, overlay=texts, place_in_cells=False)
    last = Counter((f.path, f.code) for f in result.findings)
    removed: dict[str, dict[str, int]] = defaultdict(dict)
    for display, code in sorted(applied):
        if (count := first[display, code] - last[display, code]) > 0:
            removed[display][code] = count
    changes = [
        FileChange(by_display[d], originals[d][0], originals[d][1], texts[d], notes[d],
                   notebooks.get(d), removed[d])
        for d in sorted(originals) if texts[d] != originals[d][0]
    ]
    if context:  # only the named files' findings remain to report
        result.findings = [f for f in result.findings if f.path in by_display]
    return FixRun(changes, _placed_in_cells(result, by_display, texts), errors)


def _fixed(fix: Fixer, source: str, findings: Sequence[Finding], options: Mapping[str, Any]
           ) -> FixResult:
    """One fixer's result, its new lines laid out to the project's line length (whichever
    fixer wrote them)."""
    outcome = fix(source, findings, options)
    if outcome.source != source:
        outcome.source = fit_new_lines(outcome.source, source, line_length(options))
    return outcome


_T = TypeVar("_T")
# Stack and recursion limit for a fixer retried on a deeply nested expression (LibCST walks
# a 400-term sum one frame per term, and its metadata copies the tree recursively).
DEEP_STACK_BYTES = 512 * 1024 * 1024
DEEP_RECURSION_LIMIT = 100_000


def _deep(call: Callable[[], _T]) -> _T:
    """``call()``; on RecursionError, once more in a thread with a large stack and a high
    recursion limit (the limit is the interpreter's: it is put back when the call ends)."""
    try:
        return call()
    except RecursionError:
        pass
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    old_limit = sys.getrecursionlimit()
    old_stack = threading.stack_size(DEEP_STACK_BYTES)
    try:
        sys.setrecursionlimit(max(old_limit, DEEP_RECURSION_LIMIT))
        worker = threading.Thread(target=run, name="trainaudit-deep-fix")
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old_stack)
        sys.setrecursionlimit(old_limit)
    if failure:
        raise failure[0]
    return outcome[0]


def _cells(source: str) -> list[int]:
    return [number for _, number in cell_starts(source)]


def _placed_in_cells(result: CheckResult, files: Mapping[str, SourceFile],
                     texts: Mapping[str, str]) -> CheckResult:
    """The remaining findings with notebook positions in cells (as ``check`` prints them)."""
    if not any(is_notebook(f.path) for f in result.findings):
        return result

    def starts_of(path: str) -> CellStarts:
        if not is_notebook(path) or path not in files:
            return ()
        try:
            source = texts.get(path) or source_of(path, files[path].path.read_bytes())
        except (OSError, DecodeError):
            return ()
        return cell_starts(source)

    result.findings = sorted((in_cells(f, starts_of) for f in result.findings),
                             key=Finding.sort_key)
    return result


class UnwritableFile(Exception):
    """A fixed file that cannot (or must not) be written back; the message says why."""


def write_atomically(change: FileChange) -> None:
    """Replace the file in one step, keeping its encoding, line endings, mode and owner.

    A read-only file is refused (UnwritableFile): its mode says it is not to be edited,
    and replacing it would succeed anyway where the folder is writable. Where the new
    file cannot be given the old one's owner (another user's file in a shared folder),
    it is rewritten in place instead, which keeps the owner."""
    path = Path(os.path.realpath(change.file.path))  # a symlink keeps pointing at the fixed file
    display = change.file.display
    try:
        before = path.stat()
    except OSError as exc:
        raise UnwritableFile(f"{display}: cannot write the fix: {exc.strerror or exc}") from None
    if not before.st_mode & stat.S_IWUSR or not os.access(path, os.W_OK):
        raise UnwritableFile(f"{display}: not fixed: the file is read-only")
    data = change.output().encode(change.encoding)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".trainaudit", dir=path.parent)
    except OSError:  # a folder we cannot write: the file itself may still be writable
        _write_in_place(path, data, display)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, before.st_mode & 0o7777)
        if (before.st_uid, before.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.chown(tmp, before.st_uid, before.st_gid)
            except OSError:
                Path(tmp).unlink(missing_ok=True)
                _write_in_place(path, data, display)
                return
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UnwritableFile(f"{display}: cannot write the fix: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_in_place(path: Path, data: bytes, display: str) -> None:
    try:
        with open(path, "r+b") as handle:
            handle.write(data)
            handle.truncate()
    except OSError as exc:
        raise UnwritableFile(f"{display}: cannot write the fix: {exc.strerror or exc}") from None


def write_changes(changes: Sequence[FileChange]) -> tuple[list[FileChange], list[str]]:
    """Write every change that can be written: (the changes written, why others were not)."""
    written: list[FileChange] = []
    errors: list[str] = []
    for change in changes:
        try:
            write_atomically(change)
        except UnwritableFile as exc:
            errors.append(str(exc))
        else:
            written.append(change)
    return written, errors
