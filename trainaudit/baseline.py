"""Baselines: accept the findings a project already has, fail only on new ones.

``check --write-baseline FILE`` records every current finding; ``check
--baseline FILE`` then drops the findings recorded there. A finding is
recorded by its code, its path (relative to the baseline file, so the file
works from any working directory) and a fingerprint of the *content* of the
line it starts on — whitespace-normalised — plus its occurrence index among
the findings of the same code on identical lines of that file. Line numbers
are stored for people, never matched: an edit elsewhere that moves the line
keeps the match, an edit of the flagged line itself makes the finding new.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainaudit.diagnostics import Finding
from trainaudit.notebook import notebook_cell_lines

BASELINE_VERSION = 1

# path as reported (relative to the working directory) -> the file's lines
LinesOf = Callable[[str], Sequence[str]]


class BaselineError(Exception):
    """The baseline file cannot be read or is not a baseline (exit code 2)."""


def read_lines_from_disk(overlay: dict[str, str] | None = None) -> LinesOf:
    """A ``LinesOf`` that reads files once each (``overlay`` holds stdin's text)."""
    cache: dict[str, Sequence[str]] = {k: v.splitlines() for k, v in (overlay or {}).items()}

    def lines_of(path: str) -> Sequence[str]:
        if path not in cache:
            file, _, cell = path.partition(":cell ")  # a notebook cell: train.ipynb:cell 3
            try:
                text = Path(file).read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            cache[path] = notebook_cell_lines(text, int(cell)) if cell else text.splitlines()
        return cache[path]

    return lines_of


def _normalise(line: str) -> str:
    return " ".join(line.split())


def fingerprints(findings: Iterable[Finding], lines_of: LinesOf) -> list[str]:
    """One fingerprint per finding, in the order given (see the module docstring)."""
    ordered = list(findings)
    seen: dict[tuple[str, str, str], int] = {}
    prints: dict[int, str] = {}
    for index in sorted(range(len(ordered)), key=lambda i: ordered[i].sort_key()):
        finding = ordered[index]
        lines = lines_of(finding.location)
        line = finding.span.line
        content = _normalise(lines[line - 1]) if 0 < line <= len(lines) else ""
        key = (finding.path, finding.code, content)
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        material = f"{finding.code}\0{content}\0{occurrence}".encode()
        prints[index] = hashlib.blake2b(material, digest_size=10).hexdigest()
    return [prints[i] for i in range(len(ordered))]


def _relative(path: str, base: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()


@dataclass(frozen=True)
class Baseline:
    """The findings a baseline file accepts, as (code, path, fingerprint) keys."""

    base: Path
    keys: frozenset[tuple[str, str, str]]

    def split(self, findings: Sequence[Finding], lines_of: LinesOf) -> tuple[list[Finding], int]:
        """The findings not in the baseline, and how many were in it."""
        kept: list[Finding] = []
        for finding, fp in zip(findings, fingerprints(findings, lines_of), strict=True):
            if (finding.code, _relative(finding.path, self.base), fp) not in self.keys:
                kept.append(finding)
        return kept, len(findings) - len(kept)


def load_baseline(path: Path) -> Baseline:
    """Read a baseline file written by ``write_baseline``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"baseline not found: {path} (create it with --write-baseline)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{path}: cannot read baseline: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != BASELINE_VERSION \
            or not isinstance(data.get("findings"), list):
        raise BaselineError(f"{path}: not a trainaudit baseline (version {BASELINE_VERSION})")
    keys = set()
    for item in data["findings"]:
        try:
            keys.add((str(item["code"]), str(item["path"]), str(item["fingerprint"])))
        except (TypeError, KeyError):
            raise BaselineError(f"{path}: malformed entry {item!r}") from None
    return Baseline(path.resolve().parent, frozenset(keys))


def write_baseline(path: Path, findings: Sequence[Finding], lines_of: LinesOf) -> None:
    """Record ``findings`` so that a later ``--baseline`` run accepts them."""
    base = path.resolve().parent
    entries = [
        {"code": f.code, "path": _relative(f.path, base), "fingerprint": fp,
         "line": f.span.line, "message": f.message}
        for f, fp in zip(findings, fingerprints(findings, lines_of), strict=True)
    ]
    entries.sort(key=lambda e: (e["path"], e["line"], e["code"]))
    text = json.dumps({"version": BASELINE_VERSION, "tool": "trainaudit", "findings": entries},
                      indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
