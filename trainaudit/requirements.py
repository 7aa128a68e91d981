"""The oldest torch a project declares it supports, read from its packaging files.

A "safe" rename to an API that a newer torch introduced (``torch.amp.GradScaler`` needs
2.3) raises ``AttributeError`` on the older torch a project still admits, so fixes ask
this module first. Read, in the project's root (the nearest folder at or above the
checked path holding one of them): ``pyproject.toml`` (PEP 621 dependencies and optional
dependencies, Poetry's dependency tables), ``setup.cfg`` (``install_requires`` and
extras), ``setup.py`` (any string literal that is a torch requirement) and
``requirements*.txt``. A lock file pins what one environment installed, not what the
project admits, so it is not read.
"""

from __future__ import annotations

import ast
import configparser
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py")

# ``torch>=1.13,<3``, ``torch (>=1.13)``, ``torch[opt-einsum]~=2.1; python_version>'3.8'``.
_REQUIREMENT = re.compile(r"^\s*torch(?![\w.-])\s*(?:\[[^\]]*\])?\s*\(?\s*(?P<spec>[^;#)]*)", re.IGNORECASE)
# Clauses that give a lower bound; ``<`` and ``!=`` give none.
_LOWER = re.compile(r"^(?:>=|==|~=|===|>|\^|~)?\s*v?(?P<version>\d+(?:\.\d+)*)")

Version = tuple[int, ...]


def parse_version(text: str) -> Version | None:
    """``"2.3"`` -> ``(2, 3)``; None when the text is not a release number."""
    match = re.fullmatch(r"\s*v?(\d+(?:\.\d+)*)\S*\s*", text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def format_version(version: Version) -> str:
    return ".".join(str(part) for part in version)


def lower_bound(requirement: str) -> Version | None:
    """The oldest torch a requirement string admits: ``torch>=1.13,<3`` -> (1, 13);
    None when it is not a torch requirement or sets no lower bound (bare ``torch``)."""
    match = _REQUIREMENT.match(requirement)
    if match is None:
        return None
    bounds = []
    for clause in match.group("spec").split(","):
        clause = clause.strip()
        if not clause or clause.startswith(("<", "!=")):
            continue
        found = _LOWER.match(clause)
        if found is not None:
            bounds.append(tuple(int(p) for p in found.group("version").split(".")))
    return max(bounds) if bounds else None


def project_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` with a packaging or requirements file."""
    directory = start.resolve()
    if directory.is_file():
        directory = directory.parent
    for folder in (directory, *directory.parents):
        if any((folder / name).is_file() for name in PROJECT_FILES) or any(
                folder.glob("requirements*.txt")):
            return folder
    return None


def declared_torch_floor(start: Path) -> Version | None:
    """The oldest torch the project at or above ``start`` admits (the lowest lower bound
    over its declarations); None when it declares none with a lower bound."""
    root = project_root(start)
    if root is None:
        return None
    bounds = [bound for requirement in _requirements(root)
              if (bound := lower_bound(requirement)) is not None]
    return min(bounds) if bounds else None


def _requirements(root: Path) -> Iterator[str]:
    yield from _pyproject(root / "pyproject.toml")
    yield from _setup_cfg(root / "setup.cfg")
    yield from _setup_py(root / "setup.py")
    for path in sorted(root.glob("requirements*.txt")):
        yield from _lines(_read(path))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            yield line


def _pyproject(path: Path) -> Iterator[str]:
    if not path.is_file():
        return
    try:
        data = tomllib.loads(_read(path))
    except tomllib.TOMLDecodeError:
        return
    project = data.get("project", {})
    if isinstance(project, dict):
        yield from _strings(project.get("dependencies", []))
        extras = project.get("optional-dependencies", {})
        if isinstance(extras, dict):
            for group in extras.values():
                yield from _strings(group)
    poetry = data.get("tool", {}).get("poetry", {}) if isinstance(data.get("tool"), dict) else {}
    if isinstance(poetry, dict):
        tables = [poetry.get("dependencies", {})]
        groups = poetry.get("group", {})
        if isinstance(groups, dict):
            tables += [g.get("dependencies", {}) for g in groups.values() if isinstance(g, dict)]
        for table in tables:
            if isinstance(table, dict) and "torch" in table:
                yield from _poetry_constraint(table["torch"])


def _poetry_constraint(value: Any) -> Iterator[str]:
    """Poetry writes ``torch = "^1.13"`` or ``torch = {version = ">=1.13"}`` (or a list)."""
    if isinstance(value, str):
        yield f"torch {value}"
    elif isinstance(value, dict) and isinstance(value.get("version"), str):
        yield f"torch {value['version']}"
    elif isinstance(value, list):
        for item in value:
            yield from _poetry_constraint(item)


def _strings(values: Any) -> Iterable[str]:
    return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []


def _setup_cfg(path: Path) -> Iterator[str]:
    if not path.is_file():
        return
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(_read(path))
    except configparser.Error:
        return
    if parser.has_option("options", "install_requires"):
        yield from _lines(parser.get("options", "install_requires"))
    if parser.has_section("options.extras_require"):
        for _, value in parser.items("options.extras_require"):
            yield from _lines(value)


def _setup_py(path: Path) -> Iterator[str]:
    """Every string literal of ``setup.py`` that reads as a torch requirement: the lists
    handed to ``install_requires`` are usually literals or built from them."""
    if not path.is_file():
        return
    try:
        tree = ast.parse(_read(path))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for line in node.value.splitlines():
                if _REQUIREMENT.match(line):
                    yield line
