"""Measure the loop, precision and mode rules (TA202, TA203, TA303, TA502) on the loop corpus:
statically on every composition, and under ``trainaudit probe`` on the runnable ones.

    python -m benchmarks.corpus.loop_measure [--count N] [--seed S] [--probe K] [--out DIR]

Every twin is checked alone with every TA2xx/TA3xx/TA5xx rule selected: the four codes
are scored against the truth, and any other error of those families on a clean twin is
reported as a defect. ``--probe K`` runs every runnable part at least K times under the
probe (``--probe-all``: both twins of every runnable composition) and compares its
TA202/TA203/TA303/TA502 readings with the truth (this checks the generator) and with
``check`` (this checks the checker).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.corpus.compose import sample_space, write_project
from benchmarks.corpus.loop_assemble import assemble
from benchmarks.corpus.loop_composition import (
    AXES,
    BUGS,
    TWINS,
    LoopComposition,
    problems,
    truth,
)
from benchmarks.corpus.loop_known import known_cause
from benchmarks.corpus.probe import chosen_runs, emit, probe_in_process
from benchmarks.corpus.static import _pct, check_project

FAMILIES = ("TA2", "TA3", "TA5")
# Plain loops run 2 optimizer steps, the others 6: 4 covers an evaluation and the steps
# after it, and two scheduler intervals.
PROBE_STEPS = 4


def sample(count: int, seed: int) -> list[LoopComposition]:
    """``count`` distinct loop compositions whose parts fit, the same for the same seed."""
    # A Lightning part fits about 1 draw in 3,000: enough tries that it is never skipped.
    return sample_space(count, seed, AXES, LoopComposition, problems, tries=100_000)


def write(root: Path, comp: LoopComposition, twin: str) -> dict[str, Any]:
    """Write one twin of a loop composition under ``root``; return its truth."""
    return write_project(root, comp, twin, assemble, truth)


def loop_findings(folder: Path) -> list[dict[str, Any]]:
    """Every TA2xx/TA3xx/TA5xx finding in one project."""
    return check_project(folder, FAMILIES)


@dataclass
class LoopOutcome:
    """One checked twin: its truth, the loop codes found and the errors of the families."""

    truth: dict[str, Any]
    found: set[str]
    errors: set[str]

    @property
    def expected(self) -> set[str]:
        return set(self.truth["codes"])

    @property
    def missed(self) -> set[str]:
        return self.expected - self.found

    @property
    def false(self) -> set[str]:
        """Loop codes found that the truth does not expect."""
        return self.found - self.expected

    @property
    def clean_errors(self) -> set[str]:
        """On a clean twin: every error-severity code of the families (a defect)."""
        return self.errors if self.truth["twin"] == "clean" else set()


def outcome(truth_: dict[str, Any], findings: list[dict[str, Any]]) -> LoopOutcome:
    """Score one twin's findings."""
    return LoopOutcome(truth_, {f["code"] for f in findings if f["code"] in BUGS},
                       {f["code"] for f in findings if f["severity"] == "error"})


@dataclass
class LoopScore:
    """The static figures over many twins."""

    outcomes: list[LoopOutcome] = field(default_factory=list)

    def recall(self) -> dict[str, tuple[int, int]]:
        """Code → (bug twins carrying it where it was found, bug twins carrying it)."""
        out = {}
        for code in BUGS:
            carrying = [o for o in self.outcomes if code in o.expected]
            out[code] = (sum(code in o.found for o in carrying), len(carrying))
        return out

    def per_code(self) -> dict[str, tuple[int, int, int]]:
        """Code → (TP, FP, FN) over all twins."""
        table = {}
        for code in BUGS:
            tp = sum(code in o.found and code in o.expected for o in self.outcomes)
            fp = sum(code in o.found and code not in o.expected for o in self.outcomes)
            fn = sum(code in o.missed for o in self.outcomes)
            table[code] = (tp, fp, fn)
        return table

    def part_misses(self) -> list[tuple[str, str, int, int, int, int]]:
        """Per part: (bug twins with it whose code was missed, bug twins with it, twins with
        it with a false loop code or a clean-twin error, twins with it)."""
        rows = []
        for axis, parts in AXES.items():
            for part in parts:
                having = [o for o in self.outcomes if o.truth["parts"][axis] == part]
                bugs = [o for o in having if o.truth["twin"] == "bug"]
                rows.append((axis, part, sum(bool(o.missed) for o in bugs), len(bugs),
                             sum(bool(o.false or o.clean_errors) for o in having), len(having)))
        return rows

    def report(self) -> str:
        """The figures as text."""
        cleans = [o for o in self.outcomes if o.truth["twin"] == "clean"]
        exact = sum(not o.missed and not o.false for o in self.outcomes)
        erring = [o for o in cleans if o.clean_errors]
        lines = [f"twins checked: {len(self.outcomes)} ({len(self.outcomes) - len(cleans)} bug, "
                 f"{len(cleans)} clean)", "recall per code on the bug twins carrying it:"]
        lines += [f"  {code}: {found}/{total} = {_pct(found, total)}"
                  for code, (found, total) in self.recall().items()]
        lines += [f"clean twins with a TA2xx/TA3xx/TA5xx error: {len(erring)}/{len(cleans)}",
                  f"twins whose TA202/TA203/TA303/TA502 are exactly the truth: "
                  f"{exact}/{len(self.outcomes)}", "",
                  "per code over all twins (TP / FP / FN):"]
        lines += [f"  {code}: {tp} / {fp} / {fn}" for code, (tp, fp, fn) in self.per_code().items()]
        lines += ["", "per part: bug twins whose code was missed / bug twins with the part; "
                  "twins with a false loop code or a clean-twin error / twins with it",
                  f"  {'axis':<10} {'part':<16} {'missed':>7} {'of':>5} {'miss %':>7}"
                  f" {'false':>6} {'of':>5}"]
        for axis, part, missed, bugs, false, twins in self.part_misses():
            lines.append(f"  {axis:<10} {part:<16} {missed:>7} {bugs:>5} "
                         f"{_pct(missed, bugs):>7} {false:>6} {twins:>5}")
        lines += ["", "misses by cause (bug twins; the cause is the first KNOWN entry whose "
                  "parts the twin has):"]
        causes: Counter[str] = Counter()
        for o in self.outcomes:
            for code in sorted(o.missed):
                causes[known_cause(o.truth["parts"], code) or f"{code}: UNKNOWN"] += 1
        lines += [f"  {n:>5}  {cause}" for cause, n in causes.most_common()] or ["  none"]
        wrong = [o for o in self.outcomes if o.false or o.clean_errors]
        if wrong:
            lines += ["", "false loop codes and clean-twin errors (first 40):"]
            lines += [f"  {o.truth['key']}/{o.truth['twin']}: false {sorted(o.false)}, "
                      f"errors {sorted(o.clean_errors)}" for o in wrong[:40]]
        return "\n".join(lines) + "\n"


@dataclass
class LoopProbeScore:
    """Probe runs: their loop readings against the truth and against ``check``."""

    runs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, run: dict[str, Any], static: set[str]) -> None:
        run["static"] = sorted(static)
        run["measured"] = sorted(set(run["probe_codes"]) & set(BUGS))
        self.runs.append(run)

    def report(self) -> str:
        """The probe figures as text, with every disagreement."""
        truth_ok = [r for r in self.runs if r["measured"] == r["truth"]["codes"]]
        check_ok = [r for r in self.runs if r["measured"] == r["static"]]
        failed = [r for r in self.runs if "error" in r]
        per_code = {code: (sum(code in r["measured"] for r in self.runs
                               if code in r["truth"]["codes"]),
                           sum(code in r["truth"]["codes"] for r in self.runs)) for code in BUGS}
        lines = [f"probe runs: {len(self.runs)} ({len(failed)} failed to run), "
                 f"--steps {PROBE_STEPS}",
                 f"probe readings == truth: {len(truth_ok)}/{len(self.runs)}",
                 f"check == probe readings: {len(check_ok)}/{len(self.runs)}",
                 "probe reading on the bug twins carrying the code: " + ", ".join(
                     f"{c} {n}/{t}" for c, (n, t) in per_code.items())]
        causes: Counter[str] = Counter()
        for r in self.runs:
            if r in truth_ok and r not in check_ok:
                missed = sorted(set(r["measured"]) - set(r["static"]))
                causes.update(known_cause(r["truth"]["parts"], code) or f"{code}: UNKNOWN"
                              for code in missed)
                causes.update(f"{code}: check finds it, the probe does not"
                              for code in sorted(set(r["static"]) - set(r["measured"])))
        if causes:
            lines.append("check != probe, by cause (the probe reading is the truth there):")
            lines += [f"  {n:>5}  {cause}" for cause, n in causes.most_common()]
        for r in self.runs:
            if r in truth_ok:
                continue
            lines.append(f"  PROBE != TRUTH {r['truth']['key']}/{r['truth']['twin']}: truth "
                         f"{r['truth']['codes']}, probe {r['measured']}, check {r['static']}")
            if "error" in r:
                lines.append("    " + (r["error"].strip().splitlines() or ["(no stderr)"])[-1])
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write, check and (optionally) probe the loop corpus; print the report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus.loop_measure")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=0, metavar="K")
    parser.add_argument("--probe-all", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="trainaudit-loops-"))
    comps = sample(args.count, args.seed)
    score = LoopScore()
    folders: dict[tuple[int, str], Path] = {}
    for index, comp in enumerate(comps):
        for twin in TWINS:
            folder = out / f"{index:05d}-{twin}"
            score.outcomes.append(outcome(write(folder, comp, twin), loop_findings(folder)))
            folders[index, twin] = folder
    header = (f"command: python -m benchmarks.corpus.loop_measure --count {args.count} "
              f"--seed {args.seed} --probe {args.probe}{' --probe-all' if args.probe_all else ''}"
              f"\ncompositions: {len(comps)} (runnable on a CPU: "
              f"{sum(c.runnable() for c in comps)}); projects under {out}\n"
              f"static check: {time.perf_counter() - started:.0f} s\n\n")
    text = header + score.report()
    if args.probe or args.probe_all:
        found = {(o.truth["key"], o.truth["twin"]): o.found for o in score.outcomes}
        probes = LoopProbeScore()
        for key in chosen_runs(comps, args.probe, args.probe_all):
            run = probe_in_process(folders[key], steps=PROBE_STEPS)
            probes.add(run, found[run["truth"]["key"], run["truth"]["twin"]])
        text += "\n" + probes.report()
    emit(text, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
