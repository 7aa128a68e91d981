"""Run the probe in a child interpreter or under a launcher, and read back every rank."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from trainaudit.probe.launch import BOOTSTRAP, LaunchPlan
from trainaudit.probe.merge import merge_ranks
from trainaudit.probe.report import ProbeError, ProbeReport

# Where this copy of trainaudit came from, for the install hint (a clone has pyproject.toml).
_SOURCE = Path(__file__).resolve().parents[2]


def _install_hint(python: str) -> str:
    if (_SOURCE / "pyproject.toml").is_file():
        return f"{python} -m pip install '{_SOURCE}[torch]'"
    return (f"{python} -m pip install 'trainaudit[torch] @ "
            "git+https://github.com/trainaudit/trainaudit'")


def check_interpreter(plan: LaunchPlan) -> None:
    """ProbeError, with how to install it, when the named interpreter lacks trainaudit."""
    if plan.interpreter is None:
        return
    done = subprocess.run([*plan.python, "-c", f"import {BOOTSTRAP}"], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise ProbeError(
            f"{plan.interpreter} cannot import trainaudit; the probe runs inside the "
            f"interpreter the command names, so install it there: {_install_hint(plan.interpreter)}")


def run_launched(plan: LaunchPlan, *, steps: int, progress: bool) -> ProbeReport:
    """Run ``plan`` in child processes; the merged report of the ranks that wrote one."""
    check_interpreter(plan)
    with tempfile.TemporaryDirectory(prefix="trainaudit-probe-") as folder:
        options = ["--steps", str(steps), "--out", folder, *(["--progress"] if progress else [])]
        sys.stdout.flush()
        sys.stderr.flush()
        done = subprocess.run(plan.child_command(options), check=False)
        ranks = [json.loads(path.read_text(encoding="utf-8"))
                 for path in sorted(Path(folder).glob("rank-*.json"))]
    errors = [rank["error"] for rank in ranks if "error" in rank]
    if errors:
        raise ProbeError(errors[0])
    if not ranks:
        raise ProbeError(f"the command exited with code {done.returncode} before the probe "
                         "could report: " + " ".join(plan.child_command(options)))
    return merge_ranks([ProbeReport.from_json(rank) for rank in ranks])
