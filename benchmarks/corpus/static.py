"""Run ``trainaudit check`` on generated projects and score the findings against the truth.

Each project is checked alone (its modules are named ``data``, ``model``…, like
every other project's), in this process through the same calls the CLI makes
(``load_config`` → ``discover`` → ``check_files``) on the project's absolute path,
selecting only the label codes.
``check_project_cli`` runs the real command instead, to cross-check the two.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.corpus.composition import AXES, LABEL_CODES

FOUND_FALSE = ("TA101", "TA102", "TA105")  # never on a clean twin


def check_project(folder: Path, codes: Iterable[str] = LABEL_CODES) -> list[dict[str, Any]]:
    """The findings of ``codes`` (the label codes by default) in one project: ``{"code",
    "path", "line", "related", "severity"}`` (``related``: the files its related places are
    in), paths relative to the project."""
    from trainaudit.config import load_config
    from trainaudit.discover import discover
    from trainaudit.engine import check_files
    from trainaudit.registry import all_options

    folder = folder.resolve()
    config = load_config(None, start=folder, rule_options=all_options(), no_config=False)
    config = config.with_overrides(select=tuple(codes))
    files, problems = discover([folder], config)
    if problems:
        raise RuntimeError(f"{folder}: {problems}")
    result = check_files(files, config, jobs=1)
    if result.errors:
        raise RuntimeError(f"{folder}: {result.errors}")

    def local(path: str) -> str:
        return Path(path).resolve().relative_to(folder).as_posix()

    return [{"code": f.code, "path": local(f.path), "line": f.line,
             "related": sorted({local(r.path) for r in f.related}),
             "severity": f.severity.value} for f in result.findings]


def check_project_cli(folder: Path) -> list[dict[str, Any]]:
    """The same as ``check_project``, by running ``trainaudit check --format json``."""
    run = subprocess.run(
        [sys.executable, "-m", "trainaudit", "check", ".", "--format", "json", "--no-cache",
         "--select", ",".join(LABEL_CODES)],
        cwd=folder, capture_output=True, text=True, check=False)
    if run.returncode not in (0, 1):
        raise RuntimeError(f"{folder}: exit {run.returncode}: {run.stderr}")
    findings = json.loads(run.stdout)["findings"]
    return [{"code": f["code"], "path": f["path"], "line": f["line"],
             "related": sorted({r["path"] for r in f["related"]})} for f in findings]


@dataclass
class Outcome:
    """One checked twin: its truth and the codes found."""

    truth: dict[str, Any]
    found: list[str]
    # Files a TA102 finding is in or names in ``related``.
    double_shift_files: set[str] = field(default_factory=set)

    @property
    def expected(self) -> set[str]:
        return set(self.truth["codes"])

    @property
    def exact(self) -> bool:
        return set(self.found) == self.expected

    @property
    def missed_double_shift(self) -> bool:
        return self.truth["twin"] == "bug" and "TA102" not in self.found

    @property
    def false_on_clean(self) -> set[str]:
        """Codes among TA101/TA102/TA105 found on a clean twin that its truth does not expect."""
        if self.truth["twin"] != "clean":
            return set()
        return {c for c in self.found if c in FOUND_FALSE and c not in self.expected}


@dataclass
class Score:
    """The figures over many outcomes."""

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, truth: dict[str, Any], findings: Iterable[Mapping[str, Any]]) -> Outcome:
        findings = list(findings)
        files = {path for f in findings if f["code"] == "TA102"
                 for path in [f["path"], *f.get("related", [])]}
        outcome = Outcome(truth, sorted({f["code"] for f in findings}), files)
        self.outcomes.append(outcome)
        return outcome

    def bugs(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.truth["twin"] == "bug"]

    def cleans(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.truth["twin"] == "clean"]

    def recall(self) -> tuple[int, int]:
        bugs = self.bugs()
        return sum(not o.missed_double_shift for o in bugs), len(bugs)

    def placement(self) -> tuple[int, int, int, int]:
        """(found TA102 reported in data.py, found TA102; of the found with a validation
        file, those naming evaluation.py, and how many such)."""
        found = [o for o in self.bugs() if not o.missed_double_shift]
        validated = [o for o in found if o.truth["parts"]["validation"] == "other_file"]
        return (sum("data.py" in o.double_shift_files for o in found), len(found),
                sum("evaluation.py" in o.double_shift_files for o in validated), len(validated))

    def per_code(self) -> dict[str, tuple[int, int, int]]:
        """Code → (true positives, false positives, false negatives) over all twins."""
        table: dict[str, list[int]] = {code: [0, 0, 0] for code in LABEL_CODES}
        for o in self.outcomes:
            for code in LABEL_CODES:
                found, expected = code in o.found, code in o.expected
                if found and expected:
                    table[code][0] += 1
                elif found:
                    table[code][1] += 1
                elif expected:
                    table[code][2] += 1
        return {code: (v[0], v[1], v[2]) for code, v in table.items()}

    def part_misses(self) -> list[tuple[str, str, int, int, int, int]]:
        """Per part: (axis, part, bug twins with it whose TA102 was missed, bug twins with
        it, twins with it whose label codes are not the truth, twins with it)."""
        seen: Counter[tuple[str, str]] = Counter()
        missed: Counter[tuple[str, str]] = Counter()
        twins: Counter[tuple[str, str]] = Counter()
        wrong: Counter[tuple[str, str]] = Counter()
        for o in self.outcomes:
            for axis, part in o.truth["parts"].items():
                twins[axis, part] += 1
                wrong[axis, part] += not o.exact
                if o.truth["twin"] == "bug":
                    seen[axis, part] += 1
                    missed[axis, part] += o.missed_double_shift
        return [(axis, part, missed[axis, part], seen[axis, part], wrong[axis, part],
                 twins[axis, part])
                for axis, parts in AXES.items() for part in parts if twins[axis, part]]

    def report(self) -> str:
        """The figures as text: recall, clean false positives, per-code and per-part tables."""
        found, total = self.recall()
        cleans = self.cleans()
        false = [o for o in cleans if o.false_on_clean]
        exact = sum(o.exact for o in self.outcomes)
        at_data, found_n, named_val, validated = self.placement()
        lines = [
            f"twins checked: {len(self.outcomes)} ({total} bug, {len(cleans)} clean)",
            f"TA102 recall on bug twins: {found}/{total} = {_pct(found, total)}",
            f"clean twins with a false TA101/TA102/TA105: {len(false)}/{len(cleans)}",
            f"twins whose label codes are exactly the truth: {exact}/{len(self.outcomes)}",
            f"found TA102 naming the producer's file (data.py): {at_data}/{found_n}; naming "
            f"the validation loss (evaluation.py) where there is one: {named_val}/{validated}",
            "",
            "per code over all twins (TP / FP / FN):",
        ]
        for code, (tp, fp, fn) in self.per_code().items():
            lines.append(f"  {code}: {tp} / {fp} / {fn}")
        lines += ["", "per part: bug twins whose TA102 was missed / bug twins with the part; "
                  "twins (both) whose label codes are not exactly the truth / twins with it",
                  f"  {'axis':<11} {'part':<17} {'missed':>7} {'of':>5} {'miss %':>7}"
                  f" {'wrong':>7} {'of':>5} {'wrong %':>7}"]
        for axis, part, missed, seen, wrong, twins in self.part_misses():
            lines.append(f"  {axis:<11} {part:<17} {missed:>7} {seen:>5} {_pct(missed, seen):>7}"
                         f" {wrong:>7} {twins:>5} {_pct(wrong, twins):>7}")
        if false:
            lines += ["", "clean twins with a false finding:"]
            lines += [f"  {o.truth['key']}: {sorted(o.false_on_clean)}" for o in false[:40]]
        return "\n".join(lines) + "\n"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"
