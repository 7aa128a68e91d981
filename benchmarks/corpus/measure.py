"""Measure the label rules on the generated corpus: statically on every composition, and
at run time (``trainaudit probe``) on a stratified sample of the runnable ones.

    python -m benchmarks.corpus.measure [--count N] [--seed S] [--probe K] [--out DIR]

``--count`` compositions (each a clean and a bug twin) are written under ``--out``
(a temporary folder by default) and checked one project at a time. ``--probe K``
runs every runnable part at least K times under the probe (``--probe-all``: both
twins of every runnable composition) and compares the measured label offset with
the ground truth and with what ``check`` said (0: no probe runs). The report goes to
stdout and, with ``--report FILE``, to that file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.corpus.compose import ALL_PARTS, sample, vary_one, write_corpus, write_project
from benchmarks.corpus.composition import BASELINE, NAMED, TWINS, Composition
from benchmarks.corpus.probe import ProbeScore, chosen_runs, emit, probe_project
from benchmarks.corpus.static import Score, check_project, check_project_cli


def parts_alone(root: Path, check: Callable[[Path], list[dict[str, Any]]]
                ) -> tuple[str, set[tuple[str, str]]]:
    """The bug twin of ``BASELINE`` with one part changed at a time (and the fewest other
    axes changed that make it fit): is TA102 still found? Says which part alone loses it;
    returns the table and those parts."""
    losing: set[tuple[str, str]] = set()
    lines = [f"parts alone: the bug twin of the baseline ({BASELINE.key()}) with one part "
             "changed; TA102 found?"]
    base_found = "TA102" in {f["code"] for f in check(_written(root / "baseline", BASELINE))}
    lines.append(f"  {'baseline':<28} {'found' if base_found else 'MISSED'}")
    for axis, part in ALL_PARTS:
        if getattr(BASELINE, axis) == part:
            continue
        comp = vary_one(BASELINE, axis, part)
        if comp is None:
            lines.append(f"  {axis + '=' + part:<28} (fits no near composition)")
            continue
        found = "TA102" in {f["code"] for f in check(_written(root / f"{axis}-{part}", comp))}
        if not found:
            losing.add((axis, part))
        also = [f"{a}={p}" for a, p in comp.parts().items()
                if a != axis and p != getattr(BASELINE, a)]
        lines.append(f"  {axis + '=' + part:<28} {'found' if found else 'MISSED':<7}"
                     + (f" (with {', '.join(also)})" if also else ""))
    return "\n".join(lines) + "\n", losing


def combinations(score: Score, losing: set[tuple[str, str]]) -> str:
    """Bug twins none of whose parts alone loses TA102: how many are missed, and the
    parts most often in the missed ones (what a combination of parts loses)."""
    free = [o for o in score.bugs()
            if not any(item in losing for item in o.truth["parts"].items())]
    missed = [o for o in free if o.missed_double_shift]
    lines = [f"combinations: bug twins with no part that alone loses TA102: {len(free)}; "
             f"missed: {len(missed)}"]
    if missed:
        seen = Counter(item for o in free for item in o.truth["parts"].items())
        lost = Counter(item for o in missed for item in o.truth["parts"].items())
        lines.append("  parts by share of misses among them (missed / with the part):")
        ranked = sorted(lost, key=lambda item: (-lost[item] / seen[item], item))
        lines += [f"    {a}={p}: {lost[a, p]}/{seen[a, p]}" for a, p in ranked[:12]]
    return "\n".join(lines) + "\n"


def named(root: Path, check: Callable[[Path], list[dict[str, Any]]]) -> str:
    """Both twins of each named composition: the codes expected and found, and the files
    a TA102 names."""
    lines = ["named compositions: twin, codes expected -> found (files TA102 names)"]
    for name, comp in NAMED.items():
        for twin in TWINS:
            folder = root / f"{name}-{twin}"
            expected = write_project(folder, comp, twin)["codes"]
            findings = check(folder)
            files = sorted({p for f in findings if f["code"] == "TA102"
                            for p in [f["path"], *f.get("related", [])]})
            found = sorted({f["code"] for f in findings})
            lines.append(f"  {name} / {twin}: {expected} -> {found}"
                         + (f" ({', '.join(files)})" if files else ""))
    return "\n".join(lines) + "\n"


def _written(folder: Path, comp: Composition) -> Path:
    write_project(folder, comp, "bug")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Run the measure; exit 0 (the figures are the output, not a verdict)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus.measure")
    parser.add_argument("--count", type=int, default=2000, help="compositions (twin pairs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=0, metavar="K",
                        help="probe runs so that every runnable part runs at least K times")
    parser.add_argument("--probe-all", action="store_true",
                        help="probe both twins of every runnable composition (slow: ~2 s each)")
    parser.add_argument("--jobs", type=int, default=1, help="probe runs at a time")
    parser.add_argument("--out", type=Path, default=None, help="where the projects are written")
    parser.add_argument("--report", type=Path, default=None, help="also write the report here")
    parser.add_argument("--cli", action="store_true",
                        help="run the trainaudit command per project instead of the engine "
                             "in this process (slower; same figures)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="trainaudit-corpus-"))
    comps = sample(args.count, args.seed)
    check = check_project_cli if args.cli else check_project
    score = Score()
    folders: dict[tuple[int, str], Path] = {}
    findings: dict[Path, set[str]] = {}
    for folder, truth in write_corpus(out, comps):
        found = check(folder)
        score.add(truth, found)
        findings[folder] = {f["code"] for f in found}
        folders[int(folder.name.split("-")[0]), truth["twin"]] = folder
    static_seconds = time.perf_counter() - started
    header = (f"command: python -m benchmarks.corpus.measure --count {args.count} "
              f"--seed {args.seed} --probe {args.probe}{' --probe-all' if args.probe_all else ''}"
              f"{' --cli' if args.cli else ''}\n"
              f"compositions: {len(comps)} (runnable on a CPU: "
              f"{sum(c.runnable() for c in comps)}); projects under {out}\n"
              f"static check: {static_seconds:.0f} s\n\n")
    alone, losing = parts_alone(out / "alone", check)
    text = (header + score.report() + "\n" + alone + "\n" + combinations(score, losing) + "\n"
            + named(out / "named", check))
    if args.probe or args.probe_all:
        chosen = chosen_runs(comps, args.probe, args.probe_all)
        targets = [folders[key] for key in chosen]
        probes = ProbeScore()
        with ThreadPoolExecutor(max(args.jobs, 1)) as pool:  # each run is its own process
            for folder, run in zip(targets, pool.map(probe_project, targets), strict=True):
                probes.add(run, findings[folder])
        text += "\n" + probes.report()
    emit(text, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
