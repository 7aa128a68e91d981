"""Fixes (LibCST codemods), one per fixable rule, keyed by rule code.

A fixer takes a file's source and the findings of its code in that file and
returns the new source plus short notes saying what changed. What it needs
to know comes with each finding as a typed payload (``trainaudit.payloads``,
read with ``payload_of``); a fixer never re-analyses the file. Fixers share
one toolkit (``toolkit.py``: ``Edits``, ``call_at``, ``ensure_import``,
``fresh_name`` and builders) and the tree queries of ``cst.py``. Fixers are imported lazily: ``check`` never loads LibCST.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainaudit.diagnostics import Finding


@dataclass
class FixResult:
    source: str
    notes: list[str] = field(default_factory=list)


Fixer = Callable[[str, Sequence[Finding], Mapping[str, Any]], FixResult]

FIXERS: dict[str, Fixer] = {}

# When one file has findings of several codes, one code is fixed per round, in
# this order (removing a shift before rewriting it, for instance); codes not
# listed come after, in code order.
FIX_ORDER = ("TA102", "TA105", "TA101", "TA104", "TA103",
             # Loop bugs before the loop is restructured for accumulation (TA201).
             "TA206", "TA204", "TA203", "TA202", "TA205", "TA201",
             "TA502", "TA501", "TA503", "TA504",
             # API renames first; a bf16 scaler goes before the scaler protocol is repaired;
             # autocast and checkpointing once the loop has its final shape.
             "TA302", "TA306", "TA304", "TA303", "TA305", "TA301", "TA402", "TA403", "TA401")


def fixer(code: str) -> Callable[[Fixer], Fixer]:
    """Register the fixer of one rule code."""

    def decorate(function: Fixer) -> Fixer:
        if code in FIXERS:
            raise ValueError(f"fixer for {code} registered twice")
        FIXERS[code] = function
        return function

    return decorate


def load_fixers() -> dict[str, Fixer]:
    """Import every fixer module of this package once."""
    if not FIXERS:
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_") and info.name not in ("apply", "cst", "toolkit"):
                importlib.import_module(f"{__name__}.{info.name}")
    return FIXERS


def fix_priority(code: str) -> tuple[int, str]:
    return (FIX_ORDER.index(code) if code in FIX_ORDER else len(FIX_ORDER), code)
