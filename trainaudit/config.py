"""Configuration: ``[tool.trainaudit]`` in pyproject.toml, or trainaudit.toml (SPEC §6)."""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from trainaudit.catalogue import CATALOGUE
from trainaudit.diagnostics import Severity
from trainaudit.requirements import declared_torch_floor, format_version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILES = ("trainaudit.toml", ".trainaudit.toml", "pyproject.toml")

# Options of the feature/corrective fixes ([tool.trainaudit.fix]); defaults follow the review.
DEFAULT_FIX_OPTIONS: dict[str, Any] = {
    "accumulation-steps": 8,
    "autocast-dtype": "bfloat16",
    "checkpointing-default": True,
    "ignore-index": -100,
}

# Folders never entered while walking (a path given explicitly is still checked).
DEFAULT_EXCLUDE = (
    ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", "__pycache__", "node_modules",
    "site-packages", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".trainaudit_cache",
    "build", "dist", ".eggs",
)


# Where test code lives (SPEC §4: loop, precision and hygiene rules do not report there).
TEST_DIRECTORIES = frozenset({"test", "tests"})


def is_test_path(path: str) -> bool:
    """``tests/…``, ``test/…``, ``test_*.py``, ``*_test.py`` or ``conftest.py``."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    name = parts[-1] if parts else ""
    return (any(part in TEST_DIRECTORIES for part in parts[:-1]) or name == "conftest.py"
            or (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py"))


# The default selection: every rule that is right everywhere (errors and warnings, TA002);
# the advice rules run when selected (``select = ["ALL"]``, ``extend-select``, a code).
DEFAULT_SELECT: tuple[str, ...] = tuple(info.code for info in CATALOGUE if not info.advice)
ADVICE_CODES = frozenset(info.code for info in CATALOGUE if info.advice)


class ConfigError(Exception):
    """A configuration or usage error (exit code 2)."""


@dataclass(frozen=True)
class Config:
    """Settings after merging defaults, the config file and command-line flags."""

    select: tuple[str, ...] = DEFAULT_SELECT
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    per_file_ignores: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    fail_on: Severity = Severity.WARNING
    unsafe_fixes: bool = False
    # Which codes ``fix`` may fix (as ruff's ``fixable`` / ``unfixable``): prefixes, ALL.
    fixable: tuple[str, ...] = ("ALL",)
    unfixable: tuple[str, ...] = ()
    respect_gitignore: bool = True
    # Apply ``exclude`` to files named on the command line too (as ruff's force-exclude):
    # pre-commit names every changed file, excluded or not.
    force_exclude: bool = False
    # Report every rule in test files too (by default only rules that apply to tests do).
    check_tests: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    fix_options: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_FIX_OPTIONS))
    root: Path = field(default_factory=Path.cwd)
    source: Path | None = None

    def enabled_codes(self) -> frozenset[str]:
        """Codes selected and not ignored; the most specific prefix wins (as in ruff)."""
        chosen = self.select + self.extend_select
        return frozenset(
            info.code for info in CATALOGUE
            if _best_match(info.code, chosen) > _best_match(info.code, self.ignore)
        )

    def unselected_advice(self) -> frozenset[str]:
        """Advice codes left out only because they were not selected (not ignored): a
        run counts their findings to say how many were not shown."""
        return frozenset(code for code in ADVICE_CODES - self.enabled_codes()
                         if _best_match(code, self.ignore) < 0)
    def is_fixable(self, code: str) -> bool:
        """Whether ``fix`` may fix this code: the most specific of ``fixable`` and
        ``unfixable`` wins (``--fixable TA3 --unfixable TA302``)."""
        return _best_match(code, self.fixable) > _best_match(code, self.unfixable)

    def ignored_for(self, path: str) -> tuple[str, ...]:
        """Codes ignored for one file by ``per-file-ignores`` (globs relative to the config)."""
        if not self.per_file_ignores:  # the common case; resolving the path is not free
            return ()
        rel = _relative_to_root(path, self.root)
        codes: list[str] = []
        for pattern, ignored in self.per_file_ignores.items():
            if _glob_match(rel, pattern):
                codes.extend(ignored)
        return tuple(codes)

    def is_excluded(self, path: str) -> bool:
        if not self.exclude:  # the common case, and resolving paths is what a walk costs
            return False
        rel = _relative_to_root(path, self.root)
        return any(_glob_match(rel, pattern) for pattern in self.exclude)

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _best_match(code: str, selectors: Iterable[str]) -> int:
    """Length of the longest selector matching a code, -1 when none does; ``ALL`` is 0."""
    best = -1
    for selector in selectors:
        sel = selector.strip().upper()
        if sel == "ALL":
            best = max(best, 0)
        elif sel and code.startswith(sel):
            best = max(best, len(sel))
    return best


def _relative_to_root(path: str, root: Path) -> str:
    absolute = Path(path).resolve() if not Path(path).is_absolute() else Path(path)
    try:
        return absolute.relative_to(root.resolve()).as_posix()
    except ValueError:
        return PurePosixPath(Path(path).as_posix()).as_posix()


def _glob_match(rel: str, pattern: str) -> bool:
    """Match a path against a glob: a bare name matches the last component (folders are
    pruned while walking, so their contents go too), ``**`` any depth."""
    pattern = pattern.rstrip("/")
    if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel, pattern.replace("**/", "")):
        return True
    if "/" not in pattern:
        return fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern)
    return rel.startswith(pattern + "/")


def validate_selectors(values: Iterable[str], where: str) -> tuple[str, ...]:
    """Reject selectors that match no rule (a typo must not silently select nothing)."""
    result = []
    for value in values:
        sel = value.strip().upper()
        if not sel:
            continue
        if sel != "ALL" and not any(info.code.startswith(sel) for info in CATALOGUE):
            raise ConfigError(f"{where}: {value!r} matches no rule code (see `trainaudit rules`)")
        result.append(sel)
    return tuple(result)


def find_config_file(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest config file at or above ``start`` that configures trainaudit."""
    directory = start.resolve()
    if directory.is_file():
        directory = directory.parent
    for folder in (directory, *directory.parents):
        for name in CONFIG_FILES:
            candidate = folder / name
            if not candidate.is_file():
                continue
            table = _read_table(candidate)
            if table is not None:
                return candidate, table
    return None


def _read_table(path: Path) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if path.name == "pyproject.toml":
        tool = data.get("tool", {})
        table = tool.get("trainaudit") if isinstance(tool, dict) else None
        return dict(table) if isinstance(table, dict) else None
    tool = data.get("tool")
    if isinstance(tool, dict) and isinstance(tool.get("trainaudit"), dict):
        return dict(tool["trainaudit"])
    return dict(data)


_LIST_KEYS = {"select", "extend-select", "ignore", "exclude", "extend-exclude", "fixable",
              "unfixable"}


# Where a fix's generated lines must fit when the project's formatter does not say.
DEFAULT_LINE_LENGTH = 88


def project_line_length(start: Path) -> int:
    """``line-length`` of ruff or black in the nearest ``pyproject.toml`` (``ruff.toml``)
    at or above ``start``, else 88: generated code is written to fit it."""
    directory = start.resolve()
    if directory.is_file():
        directory = directory.parent
    for folder in (directory, *directory.parents):
        for name, tables in (("ruff.toml", ((),)), (".ruff.toml", ((),)),
                             ("pyproject.toml", (("tool", "ruff"), ("tool", "black")))):
            candidate = folder / name
            if not candidate.is_file():
                continue
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue
            for keys in tables:
                table: Any = data
                for key in keys:
                    table = table.get(key) if isinstance(table, dict) else None
                value = table.get("line-length") if isinstance(table, dict) else None
                if type(value) is int and value > 0:
                    return value
            if name == "pyproject.toml":
                return DEFAULT_LINE_LENGTH  # the project's root, which sets no length
    return DEFAULT_LINE_LENGTH


def load_config(path: Path | None, *, start: Path, rule_options: Mapping[str, Any],
                no_config: bool = False) -> Config:
    """Load the config file (explicit ``path`` or the nearest one) over the defaults; the
    fixes also get the project's ``line-length`` (``project_line_length``) and the rules
    the oldest torch it declares (``min-torch-version``, unless the config sets it)."""
    config = _load_config(path, start=start, rule_options=rule_options, no_config=no_config)
    if config.options.get("min-torch-version") == "":
        floor = declared_torch_floor(config.source or start)
        if floor is not None:
            config = replace(config, options={**config.options,
                                              "min-torch-version": format_version(floor)})
    if "line-length" in config.fix_options:
        return config
    length = project_line_length(config.source or start)
    return replace(config, fix_options={**config.fix_options, "line-length": length})


def _load_config(path: Path | None, *, start: Path, rule_options: Mapping[str, Any],
                 no_config: bool = False) -> Config:
    defaults = Config(options=dict(rule_options), root=Path.cwd())
    if no_config:
        return defaults
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        table = _read_table(path) or {}
        found: tuple[Path, dict[str, Any]] | None = (path, table)
    else:
        found = find_config_file(start)
    if found is None:
        return defaults
    file, table = found
    return _from_table(table, file, defaults, rule_options)


def _from_table(table: Mapping[str, Any], file: Path, defaults: Config,
                rule_options: Mapping[str, Any]) -> Config:
    where = str(file)
    known = _LIST_KEYS | {"per-file-ignores", "fail-on", "unsafe-fixes", "fix",
                          "respect-gitignore", "check-tests", "force-exclude"} | set(rule_options)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s): {', '.join(unknown)}")

    def strings(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: `{key}` must be a list of strings")
        return tuple(value)

    changes: dict[str, Any] = {"root": file.parent.resolve(), "source": file}
    if "select" in table:
        changes["select"] = validate_selectors(strings("select"), f"{where}: select")
    changes["extend_select"] = validate_selectors(strings("extend-select"), where)
    changes["ignore"] = validate_selectors(strings("ignore"), f"{where}: ignore")
    if "fixable" in table:
        changes["fixable"] = validate_selectors(strings("fixable"), f"{where}: fixable")
    changes["unfixable"] = validate_selectors(strings("unfixable"), f"{where}: unfixable")
    changes["exclude"] = strings("exclude") + strings("extend-exclude")
    pfi = table.get("per-file-ignores", {})
    if not isinstance(pfi, dict):
        raise ConfigError(f"{where}: `per-file-ignores` must be a table of glob = [codes]")
    per_file: dict[str, tuple[str, ...]] = {}
    for glob, codes in pfi.items():
        listed = codes if isinstance(codes, list) else [codes]
        if not all(isinstance(c, str) for c in listed):
            raise ConfigError(f"{where}: `per-file-ignores` {glob!r} must be a code or a list of codes")
        per_file[str(glob)] = validate_selectors(listed, f"{where}: per-file-ignores {glob!r}")
    changes["per_file_ignores"] = per_file
    if "fail-on" in table:
        try:
            changes["fail_on"] = Severity.parse(str(table["fail-on"]))
        except ValueError as exc:
            raise ConfigError(f"{where}: fail-on: {exc}") from None
    for key, attr in (("unsafe-fixes", "unsafe_fixes"), ("respect-gitignore", "respect_gitignore"),
                      ("check-tests", "check_tests"), ("force-exclude", "force_exclude")):
        if key in table:
            if not isinstance(table[key], bool):
                raise ConfigError(f"{where}: `{key}` must be true or false")
            changes[attr] = table[key]
    options = dict(rule_options)
    for key in sorted(set(table) & set(rule_options)):
        options[key] = _checked_option(key, table[key], rule_options[key], f"{where}: `{key}`")
    changes["options"] = options
    fix_table = table.get("fix", {})
    if not isinstance(fix_table, dict):
        raise ConfigError(f"{where}: [fix] must be a table")
    unknown_fix = sorted(set(fix_table) - set(DEFAULT_FIX_OPTIONS))
    if unknown_fix:
        raise ConfigError(f"{where}: unknown [fix] option(s): {', '.join(unknown_fix)}")
    changes["fix_options"] = {
        **DEFAULT_FIX_OPTIONS,
        **{key: _checked_option(key, value, DEFAULT_FIX_OPTIONS[key], f"{where}: [fix] `{key}`")
           for key, value in sorted(fix_table.items())},
    }
    return replace(defaults, **changes)


# Limits of the options whose type alone does not say what is valid (rules and fixes
# declare only defaults). An integer option not listed here takes any integer.
POSITIVE_OPTIONS = frozenset({"min-effective-batch", "long-sequence-threshold",
                              "accumulation-steps"})
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"autocast-dtype": ("bfloat16", "float16")}


def _checked_option(key: str, value: Any, default: Any, where: str) -> Any:
    """``value`` if it has the default's type and is in range; else a ConfigError that
    starts with ``where`` (the file and the key)."""
    kind = type(default)
    names = {bool: "true or false", int: "an integer", str: "a string"}
    # bool is an int to Python, and 8.0 is not a count: the exact type is required.
    if type(value) is not kind:
        raise ConfigError(f"{where} must be {names.get(kind, kind.__name__)} (got {value!r})")
    if key in POSITIVE_OPTIONS and value < 1:
        raise ConfigError(f"{where} must be an integer >= 1 (got {value!r})")
    choices = OPTION_CHOICES.get(key)
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))} (got {value!r})")
    return value
