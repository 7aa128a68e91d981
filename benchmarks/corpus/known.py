"""Print the current known-miss tables for ``tests/test_corpus.py``.

    python -m benchmarks.corpus.known [--count N] [--seed S]

The test states the ground truth exactly and lists, by name, what ``check`` misses
today: the parts that alone lose TA102 on the baseline's bug twin, and the twins of
the seeded sample and of the named compositions whose label codes are not the
truth (with the parts to blame).
Run this after the flow model changes and paste what it prints over the tables.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.corpus.compose import ALL_PARTS, sample, vary_one, write_project
from benchmarks.corpus.composition import BASELINE, NAMED, TWINS, Composition
from benchmarks.corpus.static import FOUND_FALSE, check_project


def alone_outcomes(root: Path) -> dict[tuple[str, str], dict[str, tuple[list[str], list[str]]]]:
    """Part → twin → (codes found, codes expected) for the baseline with that one part."""
    out: dict[tuple[str, str], dict[str, tuple[list[str], list[str]]]] = {}
    for axis, part in ALL_PARTS:
        comp = vary_one(BASELINE, axis, part)
        if comp is None:
            continue
        out[axis, part] = {}
        for twin in TWINS:
            folder = root / f"{axis}-{part}-{twin}"
            truth = write_project(folder, comp, twin)
            found = sorted({f["code"] for f in check_project(folder)})
            out[axis, part][twin] = (found, truth["codes"])
    return out


def blame(comp: Composition, twin: str, wrong_alone: set[tuple[str, str, str]]) -> str:
    """The parts of ``comp`` that alone make this twin's codes wrong; else those that alone
    lose TA102 (they lose the labels' value, which TA101/TA103/TA104 read too); else
    "a combination"."""
    parts = [f"{a}={p}" for a, p in comp.parts().items() if (a, p, twin) in wrong_alone]
    if parts:
        return ", ".join(parts)
    losing = [f"{a}={p}" for a, p in comp.parts().items() if (a, p, "bug") in wrong_alone]
    if losing:
        return "value lost by " + ", ".join(losing)
    return "a combination (no part alone makes it wrong)"


def _in_axes_order(item: tuple[str, str, str]) -> tuple[int, str]:
    return ALL_PARTS.index(item[:2]), item[2]


def main(argv: list[str] | None = None) -> int:
    """Print KNOWN_ALONE, KNOWN_MISSES and KNOWN_FALSE_ON_CLEAN as Python literals."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus.known")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="trainaudit-known-"))
    alone = alone_outcomes(root / "alone")
    wrong_alone = {(axis, part, twin) for (axis, part), twins in alone.items()
                   for twin, (found, expected) in twins.items() if found != expected}
    out = ["KNOWN_ALONE = {"]
    out += [f'    ("{axis}", "{part}", "{twin}"): {alone[axis, part][twin][0]!r},'
            for axis, part, twin in sorted(wrong_alone, key=_in_axes_order)]
    out += ["}", "", "KNOWN_MISSES = {"]
    false_on_clean = []
    for index, comp in enumerate(sample(args.count, args.seed) + list(NAMED.values())):
        for twin in TWINS:
            folder = root / f"{index:03d}-{twin}"
            truth = write_project(folder, comp, twin)
            found = sorted({f["code"] for f in check_project(folder)})
            if found != truth["codes"]:
                out.append(f'    "{comp.key()}/{twin}": "{blame(comp, twin, wrong_alone)}",')
            false = sorted(c for c in found if c in FOUND_FALSE and c not in truth["codes"])
            if false:
                false_on_clean.append(f'    "{comp.key()}/{twin}": {false!r},')
    out += ["}", "", "KNOWN_FALSE_ON_CLEAN = {", *false_on_clean, "}"]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
