"""The `trainaudit probe` command line: run a command under the probes, or diff two reports.

Kept apart from ``trainaudit/cli.py`` so that the CLI stays a thin layer; nothing
here imports torch until a probe runs in this process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from trainaudit.probe.report import ProbeError, ProbeReport

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
USAGE = ("give the command to run: trainaudit probe -- python train.py ARGS..., "
         "or compare two reports: trainaudit probe diff BEFORE.json AFTER.json")


def _fail(err: Console, message: str) -> int:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return EXIT_ERROR


def prepare_json_path(path: Path) -> None:
    """Create the report's folder and check it can be written, before anything runs."""
    if path.is_dir():
        raise ProbeError(f"--json {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProbeError(f"--json {path}: cannot create its folder: {exc.strerror}") from exc
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ProbeError(f"--json {path}: not writable")


def load_report(path: str) -> ProbeReport:
    """A report written by ``probe --json``; ProbeError when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read the probe report {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProbeError(f"{path}: not a trainaudit probe report")
    return ProbeReport.from_json(data)


def diff_command(paths: list[str], out: Console, err: Console) -> int:
    """``probe diff BEFORE.json AFTER.json``: the table; exit 0, or 2 on a bad file."""
    from trainaudit.probe.diff import diff_reports, render_diff

    if len(paths) != 2:
        return _fail(err, "probe diff takes two reports: trainaudit probe diff BEFORE.json AFTER.json")
    try:
        before, after = (load_report(path) for path in paths)
    except ProbeError as exc:
        return _fail(err, str(exc))
    render_diff(diff_reports(before, after), out)
    return EXIT_OK


def probe_command(argv: list[str], *, steps: int, json_path: Path | None, out: Console,
                  err: Console) -> int:
    """Run ``argv`` (what follows ``--``) under the probes; the exit code of ``trainaudit probe``."""
    if argv[:1] == ["diff"]:
        return diff_command(argv[1:], out, err)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        return _fail(err, USAGE)
    from trainaudit.probe import render_report, run_probe
    from trainaudit.probe.launch import plan_launch
    from trainaudit.probe.launched import run_launched

    try:
        if json_path is not None:
            prepare_json_path(json_path)
        plan = plan_launch(argv)
        if plan.in_process:
            report = run_probe([plan.target, *plan.args], steps=steps, module=plan.module,
                               progress=err.file)
        else:
            report = run_launched(plan, steps=steps, progress=True)
    except ProbeError as exc:
        return _fail(err, str(exc))
    render_report(report, out)
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    failing = any(f.severity in ("error", "warning") for f in report.findings)
    return EXIT_FINDINGS if failing else EXIT_OK
