"""The run-time oracle: run generated projects under ``trainaudit probe`` and compare the
label offset it measures with the ground truth (this checks the generator) and with
what ``check`` said (this checks the checker).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.corpus.composition import TWINS

PROBE_STEPS = 2
TIMEOUT_S = 300


def probe_project(folder: Path, timeout: float = TIMEOUT_S,
                  steps: int = PROBE_STEPS) -> dict[str, Any]:
    """Run ``trainaudit probe --steps 2 --json probe.json -- python train.py`` in ``folder``.

    Returns the truth, the measured ``label_offset`` (None when the run failed or the
    probe could not tell), the codes of the probe's findings (``probe_codes``) and, on
    failure, the exit code and the end of stderr.
    """
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    report = folder / "probe.json"
    report.unlink(missing_ok=True)
    run = subprocess.run(
        [sys.executable, "-m", "trainaudit", "probe", "--steps", str(steps),
         "--json", str(report), "--", sys.executable, "train.py"],
        cwd=folder, capture_output=True, text=True, timeout=timeout, check=False)
    measured = json.loads(report.read_text(encoding="utf-8")) if report.exists() else None
    result = _result(truth, folder, run.returncode, measured)
    if run.returncode not in (0, 1) or measured is None:
        result["error"] = run.stderr[-2000:]
    return result


def probe_in_process(folder: Path, steps: int = PROBE_STEPS) -> dict[str, Any]:
    """The same as :func:`probe_project`, run in this process by ``run_probe`` (no torch
    start-up per project; one run at a time, as the probe patches torch globally)."""
    from trainaudit.probe import run_probe

    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    report = run_probe(["train.py"], steps=steps, cwd=str(folder))
    return _result(truth, folder, 1 if report.findings else 0, report.to_json())


def _result(truth: dict[str, Any], folder: Path, rc: int,
            measured: dict[str, Any] | None) -> dict[str, Any]:
    result: dict[str, Any] = {"truth": truth, "folder": str(folder), "rc": rc,
                              "label_offset": None, "probe_codes": []}
    if measured is not None:
        result["label_offset"] = measured["label_offset"]
        result["probe_codes"] = sorted({f["code"] for f in measured["findings"]})
        if str(measured.get("script_exit", "")).startswith("error"):
            result["error"] = measured["script_exit"]
    return result


def chosen_runs(comps: Sequence[Any], times: int, every: bool) -> list[tuple[int, str]]:
    """(composition index, twin) pairs to probe: both twins of every runnable composition
    (``every``), else :func:`stratified`."""
    if every:
        return [(i, twin) for i, c in enumerate(comps) if c.runnable() for twin in TWINS]
    return stratified(comps, times)


def emit(text: str, report: Path | None) -> None:
    """Print a measure report, and write it to ``report`` when given."""
    sys.stdout.write(text)
    if report:
        report.write_text(text, encoding="utf-8")


def stratified(comps: Sequence[Any], times: int) -> list[tuple[int, str]]:
    """(composition index, twin) pairs to probe: every part of a runnable composition at
    least ``times`` times (as far as the sample has them), twins alternating."""
    counts: Counter[tuple[str, str]] = Counter()
    chosen: list[tuple[int, str]] = []
    for index, comp in enumerate(comps):
        if not comp.runnable():
            continue
        parts = comp.parts().items()
        if all(counts[part] >= times for part in parts):
            continue
        chosen.append((index, TWINS[len(chosen) % 2]))
        counts.update(parts)
    return chosen


@dataclass
class ProbeScore:
    """Probe runs against the truth and against ``check``."""

    runs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, run: dict[str, Any], static_codes: set[str]) -> None:
        run["static_codes"] = sorted(static_codes)
        self.runs.append(run)

    def disagreements(self) -> list[dict[str, Any]]:
        """Runs whose measured offset is not the ground truth's."""
        return [r for r in self.runs if r["label_offset"] != r["truth"]["label_offset"]]

    def static_agreement(self) -> tuple[int, int]:
        """Runs where ``check`` reports TA102 exactly when the probe measures offset 2."""
        agree = sum(("TA102" in r["static_codes"]) == (r["label_offset"] == 2) for r in self.runs)
        return agree, len(self.runs)

    def report(self) -> str:
        """The probe figures as text."""
        wrong = self.disagreements()
        agree, total = self.static_agreement()
        parts: Counter[tuple[str, str]] = Counter()
        for r in self.runs:
            parts.update(r["truth"]["parts"].items())
        fewest = min(parts.values()) if parts else 0
        lines = [f"probe runs: {len(self.runs)} (every runnable part probed at least "
                 f"{fewest} times, {len(parts)} parts)",
                 f"probe offset == ground truth: {len(self.runs) - len(wrong)}/{len(self.runs)}",
                 f"check agrees with the probe (TA102 exactly where the offset is 2): "
                 f"{agree}/{total}"]
        for r in wrong:
            lines.append(f"  DISAGREE {r['folder']}: probe {r['label_offset']}, truth "
                         f"{r['truth']['label_offset']}, rc {r['rc']}")
            if "error" in r:
                lines.append("    " + r["error"].strip().splitlines()[-1] if r["error"].strip()
                             else "    (no stderr)")
        return "\n".join(lines) + "\n"
