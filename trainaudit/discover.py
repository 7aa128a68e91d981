"""Finding the files to check: folders walked, excludes and .gitignore honoured."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainaudit.config import DEFAULT_EXCLUDE, Config


@dataclass(frozen=True)
class SourceFile:
    """A file to check: where it is on disk, and the path we print for it."""

    path: Path
    display: str


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
        self.rules: list[tuple[str, bool, bool, bool]] = []  # pattern, negate, dir_only, anchored
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line.lstrip("!")
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = line.startswith("/") or "/" in line.rstrip("/")
            self.rules.append((line.lstrip("/"), negate, dir_only, anchored))

    def ignored(self, path: Path, is_dir: bool) -> bool | None:
        try:
            rel = path.relative_to(self.base).as_posix()
        except ValueError:
            return None
        verdict: bool | None = None
        for pattern, negate, dir_only, anchored in self.rules:
            if dir_only and not is_dir:
                continue
            target = rel if anchored else rel.rsplit("/", 1)[-1]
            if fnmatch.fnmatch(target, pattern) or fnmatch.fnmatch(target, pattern.replace("**/", "")):
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

    def add(path: Path) -> None:
        try:
            real = os.path.realpath(path)
        except OSError:
            return
        if real not in files:
            files[real] = SourceFile(path, display_path(path))

    for root in paths:
        if not root.exists():
            problems.append(f"{root}: no such file or directory")
            continue
        if root.is_file():
            add(root)  # given explicitly: checked whatever its name or the excludes
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


def _is_ignored(path: Path, is_dir: bool, ignores: list[_GitIgnore]) -> bool:
    verdict = False
    resolved = path.resolve() if path.is_symlink() else path.absolute()
    for gi in ignores:
        result = gi.ignored(resolved, is_dir)
        if result is not None:
            verdict = result
    return verdict


def _walk(root: Path, config: Config, ignores: list[_GitIgnore],
          add: Callable[[Path], None]) -> None:
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[Path, list[_GitIgnore]]] = [(root, ignores)]
    while stack:
        folder, active = stack.pop()
        try:
            stat = folder.stat()
        except OSError:
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen_dirs:  # symlink loops end here
            continue
        seen_dirs.add(key)
        if config.respect_gitignore and folder != root and (gi := _load_gitignore(folder.absolute())):
            active = [*active, gi]
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
            except OSError:
                continue
            if is_dir:
                if (name.startswith(".") or name in DEFAULT_EXCLUDE
                        or (path / "pyvenv.cfg").exists()):
                    continue
                if config.is_excluded(str(path)) or _is_ignored(path, True, active):
                    continue
                stack.append((path, active))
            elif is_file and name.endswith((".py", ".pyi")):
                if config.is_excluded(str(path)) or _is_ignored(path, False, active):
                    continue
                add(path)
