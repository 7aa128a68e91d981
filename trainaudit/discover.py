"""Finding the files to check: folders walked, excludes and .gitignore honoured."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainaudit.config import DEFAULT_EXCLUDE, Config
from trainaudit.requirements import project_root as packaging_root

# What a folder walk checks: Python files and Jupyter notebooks.
SOURCE_SUFFIXES = (".py", ".pyi", ".ipynb")


@dataclass(frozen=True)
class SourceFile:
    """A file to check: where it is on disk, and the path we print for it."""

    path: Path
    display: str
    # Named on the command line (or stdin), not found by walking a folder: such a file is
    # always parsed (a syntax error in it is reported even without training words), and
    # it may lack the other files that cross-file findings need.
    explicit: bool = False


def display_path(path: Path) -> str:
    """Path relative to the working directory, ``/``-separated (SPEC §3)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


class _GitIgnore:
    """The common subset of .gitignore: names, globs, ``dir/``, ``/anchored``, ``!negation``."""

    def __init__(self, base: Path, lines: list[str]) -> None:
        self.base = base
        self.prefix = str(base).rstrip("/") + "/"
        # matcher, negate, dir_only, anchored; patterns compiled once (this runs per path).
        self.rules: list[tuple[Callable[[str], object], bool, bool, bool]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line.lstrip("!")
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = line.startswith("/") or "/" in line.rstrip("/")
            pattern = line.lstrip("/")
            regex = f"(?:{fnmatch.translate(pattern)})|(?:{fnmatch.translate(pattern.replace('**/', ''))})"
            self.rules.append((re.compile(regex).match, negate, dir_only, anchored))

    def ignored(self, path: str, is_dir: bool) -> bool | None:
        """Verdict for an absolute ``/``-separated path: True/False, None if no rule applies."""
        if not path.startswith(self.prefix):
            return None
        rel = path[len(self.prefix):]
        name = rel.rsplit("/", 1)[-1]
        verdict: bool | None = None
        for match, negate, dir_only, anchored in self.rules:
            if dir_only and not is_dir:
                continue
            if match(rel if anchored else name):
                verdict = not negate
        return verdict


def _load_gitignore(folder: Path) -> _GitIgnore | None:
    file = folder / ".gitignore"
    try:
        return _GitIgnore(folder, file.read_text(encoding="utf-8", errors="replace").splitlines())
    except OSError:
        return None


def discover(paths: list[Path], config: Config) -> tuple[list[SourceFile], list[str]]:
    """Files to check under ``paths`` (sorted, each once) and messages about paths skipped."""
    files: dict[str, SourceFile] = {}
    problems: list[str] = []

    def add(path: Path, real: str | None = None, display: str | None = None,
            explicit: bool = False) -> None:
        try:
            real = real or os.path.realpath(path)
        except OSError:
            return
        if real not in files or explicit:
            files[real] = SourceFile(path, display or display_path(path), explicit)

    for root in paths:
        if not root.exists():
            problems.append(f"{root}: no such file or directory")
            continue
        if root.is_file():
            # Checked whatever its name or the excludes, unless --force-exclude says otherwise.
            if not (config.force_exclude and is_force_excluded(root, config)):
                add(root, explicit=True)
            continue
        ignores: list[_GitIgnore] = []
        if config.respect_gitignore:
            for folder in reversed([root.resolve(), *root.resolve().parents]):
                if (gi := _load_gitignore(folder)) is not None:
                    ignores.append(gi)
                if (folder / ".git").exists():
                    ignores = [g for g in ignores if g.base == folder or folder in g.base.parents]
        _walk(root, config, ignores, add)
    return sorted(files.values(), key=lambda f: f.display), problems


def project_root(config: Config, named: Sequence[Path] = ()) -> Path | None:
    """The tree a run on named files reads for context: the config file's folder, else
    the git work tree around the working directory, else the nearest folder above the
    first named file with a packaging or requirements file, else the working directory
    when the named files are in it; None when there is none of these."""
    if config.source is not None:
        return config.root.resolve()
    here = Path.cwd().resolve()
    git = next((folder for folder in (here, *here.parents) if (folder / ".git").exists()), None)
    if git is not None or not named:
        return git
    marked = packaging_root(named[0])
    if marked is not None:
        return marked
    real = [Path(os.path.realpath(path)) for path in named]
    return here if all(here in path.parents for path in real) else None


def context_files(files: list[SourceFile], config: Config) -> list[SourceFile]:
    """The files of the project around ``files`` (all named on the command line) that a
    walk of its root reaches and that are not among them: phase 2 reads them (``check``,
    ``fix``) so that a cross-file finding whose other end is in an unchanged file is
    still found; they are never fixed."""
    named = {os.path.realpath(file.path) for file in files}
    root = project_root(config, [Path(path) for path in sorted(named)])
    if root is None or not files:
        return []
    if not any(root == Path(path) or root in Path(path).parents for path in named):
        return []  # the named files are outside that project
    walked, _ = discover([root], config)
    return [file for file in walked if os.path.realpath(file.path) not in named]


def _skipped_folder(name: str) -> bool:
    """A folder a walk never enters, whatever the config (hidden, virtual environments,
    caches, build output)."""
    return (name.startswith(".") and name not in (".", "..")) or name in DEFAULT_EXCLUDE


def is_force_excluded(path: Path, config: Config) -> bool:
    """Whether a walk from the config's root would have left out this file: it, or a
    folder above it (below the root), is excluded by ``exclude`` or by default. A file
    outside the root is matched by ``exclude`` alone."""
    real = Path(os.path.realpath(path))
    root = config.root.resolve()
    if root != real and root not in real.parents:
        return config.is_excluded(str(real))
    parts = real.relative_to(root).parts
    if any(_skipped_folder(folder) for folder in parts[:-1]):
        return True
    return any(config.is_excluded(str(root.joinpath(*parts[:depth])))
               for depth in range(1, len(parts) + 1))


def _is_ignored(path: Path, is_dir: bool, ignores: list[_GitIgnore],
                absolute: str | None = None) -> bool:
    if not ignores:
        return False
    if absolute is None or path.is_symlink():
        absolute = str(path.resolve() if path.is_symlink() else path.absolute())
    verdict = False
    for gi in ignores:
        result = gi.ignored(absolute, is_dir)
        if result is not None:
            verdict = result
    return verdict


def _walk(root: Path, config: Config, ignores: list[_GitIgnore],
          add: Callable[[Path, str | None, str | None], None]) -> None:
    cwd = os.path.realpath(os.getcwd())
    seen_dirs: set[tuple[int, int]] = set()
    # A folder's absolute, real and display paths come from its parent's, extended by
    # its name; resolved from scratch only for the root and for symbolic links.
    Where = tuple[str, str, str]
    stack: list[tuple[Path, list[_GitIgnore], Where | None]] = [(root, ignores, None)]
    while stack:
        folder, active, where = stack.pop()
        try:
            stat = folder.stat()
        except OSError:
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen_dirs:  # symlink loops end here
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if where is None:
            real = os.path.realpath(folder)
            where = (str(folder.absolute()), real,
                     display_path(folder) if not real.startswith(cwd + os.sep)
                     else Path(real[len(cwd) + 1:]).as_posix())
        absolute, real, display = where
        if (config.respect_gitignore and folder != root
                and any(e.name == ".gitignore" for e in entries)
                and (gi := _load_gitignore(Path(absolute)))):
            active = [*active, gi]
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and name.endswith(SOURCE_SUFFIXES) and entry.is_file()
            except OSError:
                continue
            if not (is_dir or is_file):
                continue
            path = Path(entry.path)
            if is_dir:
                if (_skipped_folder(name)
                        or os.path.exists(os.path.join(entry.path, "pyvenv.cfg"))):
                    continue
                if config.is_excluded(str(path)) or _is_ignored(path, True, active, f"{absolute}/{name}"):
                    continue
                child: Where | None = None
                if not entry.is_symlink():
                    child = (f"{absolute}/{name}", f"{real}/{name}",
                             _display_under(cwd, f"{real}/{name}", display, name))
                stack.append((path, active, child))
            else:
                if config.is_excluded(str(path)) or _is_ignored(
                        path, False, active, f"{absolute}/{name}"):
                    continue
                if entry.is_symlink():
                    add(path, None, None)
                else:
                    add(path, f"{real}/{name}", _display_under(cwd, f"{real}/{name}", display, name))


def _display_under(cwd: str, real: str, parent_display: str, name: str) -> str:
    """``display_path`` of a folder's entry (not a symbolic link) from its parent's."""
    if real.startswith(cwd + os.sep):
        return real[len(cwd) + 1:]
    if real == cwd:
        return "."
    return f"{parent_display}/{name}" if parent_display != "." else name
