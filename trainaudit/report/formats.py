"""Machine-readable renderers (SPEC §3) and the dispatch to the text renderer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from trainaudit import __version__
from trainaudit.catalogue import CATALOGUE
from trainaudit.diagnostics import Finding, Severity
from trainaudit.engine import CheckResult


def finding_to_json(finding: Finding) -> dict[str, Any]:
    """One finding in the SPEC §3 shape."""
    span = finding.span
    cell = {} if finding.cell is None else {"cell": finding.cell}  # notebooks only
    return {
        "code": finding.code,
        "name": finding.name,
        "severity": finding.severity.value,
        "path": finding.path,
        **cell,
        "line": span.line,
        "column": span.column,
        "end_line": span.end_line,
        "end_column": span.end_column,
        "message": finding.message,
        "fix": finding.fix.value if finding.fix else None,
        "related": [
            {"path": r.path, **({} if r.cell is None else {"cell": r.cell}), "line": r.line,
             "column": r.column, "message": r.message}
            for r in finding.related
        ],
    }


def render_json(result: CheckResult) -> str:
    payload = {
        "version": 1,
        "findings": [finding_to_json(f) for f in result.findings],
        "summary": {
            "files_seen": result.files_seen,
            "files_checked": result.files_checked,
            "findings": len(result.findings),
        },
    }
    return json.dumps(payload, indent=2)


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


_GITHUB_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render_github(result: CheckResult) -> str:
    """GitHub Actions workflow commands, one per finding."""
    lines = []
    for f in result.findings:
        props = (f"file={_escape_property(f.path)},line={f.span.line},col={f.span.column},"
                 f"endLine={f.span.end_line},endColumn={f.span.end_column},"
                 f"title={_escape_property(f'{f.code} {f.name}' + _in_cell(f))}")
        lines.append(f"::{_GITHUB_LEVEL[f.severity]} {props}::{_escape_data(f'{f.code} {f.message}')}")
    return "\n".join(lines)


def _in_cell(finding: Finding) -> str:
    """Annotations and SARIF regions count lines in the file; in a notebook they count
    within the cell this names."""
    return "" if finding.cell is None else f" (cell {finding.cell})"


_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
HELP_URI = "https://github.com/trainaudit/trainaudit/blob/main/rules/{slug}.md"


def render_sarif(result: CheckResult) -> str:
    """SARIF 2.1.0: one run, every catalogue rule with its help text."""
    rule_index = {info.code: i for i, info in enumerate(CATALOGUE)}
    rules = [
        {
            "id": info.code,
            "name": info.name,
            "shortDescription": {"text": info.summary},
            "fullDescription": {"text": info.summary},
            "help": {"text": f"{info.code} {info.name}: {info.summary}. "
                             f"Run `trainaudit explain {info.code}` for the full page."},
            "helpUri": HELP_URI.format(slug=info.slug),
            "defaultConfiguration": {"level": _SARIF_LEVEL[info.severity]},
            "properties": {"fix": info.fix.value if info.fix else None},
        }
        for info in CATALOGUE
    ]
    results = []
    for f in result.findings:
        entry: dict[str, Any] = {
            "ruleId": f.code,
            "ruleIndex": rule_index[f.code],
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f.message + _in_cell(f)},
            "locations": [_location(f.path, f.span.line, f.span.column,
                                    f.span.end_line, f.span.end_column)],
        }
        if f.related:
            entry["relatedLocations"] = [
                {**_location(r.path, r.line, r.column), "id": i, "message": {"text": r.message}}
                for i, r in enumerate(f.related)
            ]
            # The way the value went (where it was made, the files it passed, the sink), in
            # order, as code scanning shows a data flow.
            steps = [{"location": {**_location(f.path, f.span.line, f.span.column),
                                   "message": {"text": "made here"}}}]
            steps += [{"location": {**_location(r.path, r.line, r.column),
                                    "message": {"text": r.message}}} for r in f.related]
            entry["codeFlows"] = [{"threadFlows": [{"locations": steps}]}]
        results.append(entry)
    sarif = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "trainaudit",
                "version": __version__,
                "informationUri": "https://github.com/trainaudit/trainaudit",
                "rules": rules,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }
    return json.dumps(sarif, indent=2)


def _location(path: str, line: int, column: int, end_line: int | None = None,
              end_column: int | None = None) -> dict[str, Any]:
    region: dict[str, int] = {"startLine": line, "startColumn": column}
    if end_line is not None and end_column is not None:
        region.update(endLine=end_line, endColumn=max(end_column, 1))
    return {"physicalLocation": {"artifactLocation": {"uri": path}, "region": region}}


FORMATS: dict[str, Callable[[CheckResult], str]] = {
    "json": render_json,
    "github": render_github,
    "sarif": render_sarif,
}


def render(fmt: str, result: CheckResult) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    return FORMATS[fmt](result)

