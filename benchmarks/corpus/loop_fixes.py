"""Every fix runs on the loop corpus: fix generated loop projects with ``--unsafe-fixes``
and run them under the probe.

For both twins of a seeded sample of CPU-runnable loop compositions: probe the project,
run ``trainaudit fix . --apply --unsafe-fixes --select ALL --no-cache``, then every changed
file must compile, ``check --select ALL`` must report no new warning or error, and the
probe of the fixed project must run, must not read any TA202/TA203/TA303/TA502 that the fix
removed from ``check``'s findings, and must read no loop code it did not read before the
fix (on a clean twin: exactly the readings of the unfixed twin).

    python -m benchmarks.corpus.loop_fixes --count 60 --seed 0 [--jobs 2] [--report FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.corpus.fixes import FixRun, apply_fixes
from benchmarks.corpus.loop_composition import BUGS, TWINS, LoopComposition
from benchmarks.corpus.loop_measure import PROBE_STEPS, sample, write
from benchmarks.corpus.probe import emit, probe_in_process


def _readings(run: dict[str, Any]) -> set[str]:
    return set(run["probe_codes"]) & set(BUGS)


def probe_quietly(folder: Path) -> dict[str, Any]:
    """``probe_in_process`` with the loop corpus's steps, the script's prints dropped."""
    with contextlib.redirect_stdout(io.StringIO()):
        return probe_in_process(folder, steps=PROBE_STEPS)


@dataclass
class LoopFixOutcome:
    """One twin: its truth, the fix run, and the probe's runs before and after the fix."""

    truth: dict[str, Any]
    fix: FixRun
    probe_before: dict[str, Any]
    probe_after: dict[str, Any]

    def reported(self, code: str) -> bool:
        """``check`` reported ``code`` before the fix."""
        return any(f["code"] == code for f in self.fix.before)

    def offered(self, code: str) -> bool:
        """``check`` offered a fix for a ``code`` finding before the fix."""
        return any(f["code"] == code and f["fix"] is not None for f in self.fix.before)

    def removed(self) -> set[str]:
        """The loop codes the fix removed from ``check``'s findings."""
        after = {f["code"] for f in self.fix.after}
        return {c for c in BUGS if self.reported(c) and c not in after}

    def failures(self) -> list[str]:
        """What went wrong, one line each (empty when the fix is sound)."""
        out = [f"{name} does not compile after the fix" for name in self.fix.broken]
        out += [f"new warning or error after the fix: {item}" for item in self.fix.new_serious()]
        for run, when in ((self.probe_before, "before"), (self.probe_after, "after")):
            if "error" in run:
                lines = run["error"].strip().splitlines() or ["(no stderr)"]
                out.append(f"the probe run {when} the fix failed: {lines[-1]}")
        before, after = _readings(self.probe_before), _readings(self.probe_after)
        out += [f"{code} fixed statically, still read by the probe"
                for code in sorted(self.removed() & after)]
        out += [f"{code} offered a fix that left it reported" for code in BUGS
                if self.offered(code) and code not in self.removed()]
        if self.truth["twin"] == "clean" and after != before:
            out.append(f"the fix changed a clean twin's probe readings: {sorted(before)} -> "
                       f"{sorted(after)}")
        elif after - before:
            out.append(f"the probe reads {sorted(after - before)} only after the fix")
        return out


def run_sample(comps: Sequence[LoopComposition], root: Path,
               jobs: int = 2) -> list[LoopFixOutcome]:
    """Write both twins of every composition under ``root``, probe, fix and probe again."""
    folders = []
    for index, comp in enumerate(comps):
        for twin in TWINS:
            folders.append(root / f"{index:05d}-{twin}")
            write(folders[-1], comp, twin)
    # The probe patches torch for the whole process: its runs are one at a time, the
    # fixes (subprocesses) ``jobs`` at a time.
    probes_before = [probe_quietly(folder) for folder in folders]
    with ThreadPoolExecutor(jobs) as pool:
        fixes = list(pool.map(apply_fixes, folders))
    return [LoopFixOutcome(probe["truth"], fix, probe, probe_quietly(folder))
            for folder, fix, probe in zip(folders, fixes, probes_before, strict=True)]


def report(outcomes: Sequence[LoopFixOutcome]) -> str:
    """Per code: bug twins carrying it, reported, offering a fix, fixed, clean at run time;
    the clean twins; every failure with its composition key."""
    bugs = [o for o in outcomes if o.truth["twin"] == "bug"]
    cleans = [o for o in outcomes if o.truth["twin"] == "clean"]
    lines = [f"projects fixed and probed: {len(outcomes)} ({len(bugs)} bug, {len(cleans)} clean)",
             f"projects changed by a fix: {sum(bool(o.fix.changed) for o in outcomes)}",
             "bug twins per code: carrying it / check reports it / a fix offered / "
             "fix applied (check no longer reports it) / clean at run time after it / "
             "no fix offered",
             f"  {'code':<6} {'bugs':>5} {'found':>6} {'offered':>8} {'applied':>8} "
             f"{'runs clean':>11} {'no fix':>7}"]
    for code in BUGS:
        carrying = [o for o in bugs if code in o.truth["codes"]]
        applied = [o for o in carrying if code in o.removed()]
        clean = [o for o in applied if "error" not in o.probe_after
                 and code not in _readings(o.probe_after)]
        lines.append(f"  {code:<6} {len(carrying):>5} {sum(o.reported(code) for o in carrying):>6} "
                     f"{sum(o.offered(code) for o in carrying):>8} {len(applied):>8} "
                     f"{len(clean):>11} "
                     f"{sum(o.reported(code) and not o.offered(code) for o in carrying):>7}")
    lines += [f"clean twins changed by a fix: {sum(bool(o.fix.changed) for o in cleans)}"
              f"/{len(cleans)}; with a loop code fixed: "
              f"{sum(bool(o.removed()) for o in cleans)}; probe readings changed: "
              f"{sum(_readings(o.probe_before) != _readings(o.probe_after) for o in cleans)}"]
    codes_fixed: dict[str, int] = {}
    for o in outcomes:
        for code, n in o.fix.fixed().items():
            codes_fixed[code] = codes_fixed.get(code, 0) + n
    lines.append(f"findings fixed, per code (all twins): {dict(sorted(codes_fixed.items()))}")
    failing = [o for o in outcomes if o.failures()]
    lines.append(f"twins with a failure: {len(failing)}")
    for o in failing:
        lines += [f"  FAIL {o.truth['key']}/{o.truth['twin']}: {why}" for why in o.failures()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Fix and probe a sample of the loop corpus; print the report (exit 1 on a failure)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus.loop_fixes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60, help="runnable compositions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="fix runs at a time")
    parser.add_argument("--out", type=Path, help="where to write the projects (kept)")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    # About 1 loop composition in 14 needs a framework that is not installed.
    comps = [c for c in sample(args.count * 2, args.seed) if c.runnable()][:args.count]
    root = args.out or Path(tempfile.mkdtemp(prefix="trainaudit-loop-fixes-"))
    outcomes = run_sample(comps, root, args.jobs)
    text = (f"command: python -m benchmarks.corpus.loop_fixes --count {args.count} "
            f"--seed {args.seed}\ncompositions: {len(comps)} runnable on a CPU, both twins; "
            f"projects under {root}; {time.perf_counter() - started:.0f} s\n\n"
            + report(outcomes))
    emit(text, args.report)
    return 1 if any(o.failures() for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
