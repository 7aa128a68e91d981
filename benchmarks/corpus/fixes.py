"""Every fix runs (issue 18): fix generated projects with ``--unsafe-fixes`` and run them.

For each twin of a sample of CPU-runnable compositions: ``trainaudit fix . --apply
--unsafe-fixes --select ALL``, then every changed file must compile, ``check`` must
report no new warning or error, and the fixed script must run under ``trainaudit
probe`` with the label offset ``check`` now implies (1 where the double shift was fixed
or never there; 2 where TA102 is still reported because it offers no fix).

    python -m benchmarks.corpus.fixes --count 60 --seed 0 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import py_compile
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.corpus.compose import sample, write_project
from benchmarks.corpus.composition import TWINS
from benchmarks.corpus.probe import probe_project

SERIOUS = ("error", "warning")


def all_findings(folder: Path) -> list[dict[str, Any]]:
    """Every finding of ``trainaudit check . --select ALL --no-cache`` in ``folder``, as its
    JSON output lists them."""
    run = subprocess.run([sys.executable, "-m", "trainaudit", "check", ".", "--format", "json",
                          "--no-cache", "--select", "ALL", "--exit-zero"],
                         cwd=folder, capture_output=True, text=True, check=False)
    findings: list[dict[str, Any]] = json.loads(run.stdout)["findings"]
    return findings


@dataclass
class FixRun:
    """One ``fix . --apply --unsafe-fixes --select ALL`` run: the findings before and after,
    the files it changed and those of them that no longer compile."""

    before: list[dict[str, Any]]
    after: list[dict[str, Any]]
    changed: list[str]
    broken: list[str]

    def new_serious(self) -> list[str]:
        """``"CODE path"`` of each warning or error after the fix that was not there before."""
        def serious(findings: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
            return Counter((f["code"], f["path"]) for f in findings if f["severity"] in SERIOUS)
        return sorted(f"{c} {p}" for c, p in serious(self.after) - serious(self.before))

    def fixed(self) -> Counter[str]:
        """Code → how many of its findings the fix removed."""
        return Counter(f["code"] for f in self.before) - Counter(f["code"] for f in self.after)


def apply_fixes(folder: Path) -> FixRun:
    """Fix every ``.py`` file of one generated project in place, with every rule selected and
    the unsafe fixes on; what changed."""
    sources = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.py")}
    before = all_findings(folder)
    subprocess.run([sys.executable, "-m", "trainaudit", "fix", ".", "--apply",
                    "--unsafe-fixes", "--select", "ALL", "--no-cache", "--exit-zero"],
                   cwd=folder, capture_output=True, text=True, check=False)
    changed = [name for name, text in sources.items()
               if (folder / name).read_text(encoding="utf-8") != text]
    broken = []
    for name in changed:
        try:
            py_compile.compile(str(folder / name), doraise=True)
        except py_compile.PyCompileError:
            broken.append(name)
    return FixRun(before, all_findings(folder), changed, broken)


def fix_and_run(folder: Path) -> dict[str, Any]:
    """Fix one generated project in place and run it; what happened."""
    fix = apply_fixes(folder)
    expected = 2 if any(f["code"] == "TA102" for f in fix.after) else 1
    run = probe_project(folder)
    return {"folder": str(folder), "changed": fix.changed, "broken": fix.broken,
            "new_serious": fix.new_serious(), "fixed": dict(fix.fixed()),
            "offset": run["label_offset"], "expected_offset": expected,
            "error": run.get("error")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60, help="runnable compositions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    comps = [c for c in sample(args.count * 3, args.seed) if c.runnable()][:args.count]
    work = Path(tempfile.mkdtemp(prefix="corpus-fixes-"))
    folders = []
    for index, comp in enumerate(comps):
        for twin in TWINS:
            folder = work / f"{index:05d}-{twin}"
            write_project(folder, comp, twin)
            folders.append(folder)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(fix_and_run, folders))
    fixed: Counter[str] = Counter()
    for result in results:
        fixed.update(result["fixed"])
    bad = [r for r in results if r["broken"] or r["new_serious"] or r["error"]
           or r["offset"] != r["expected_offset"]]
    print(f"command: python -m benchmarks.corpus.fixes --count {args.count} --seed {args.seed}")
    print(f"projects fixed and run: {len(results)} ({len(comps)} compositions, both twins)")
    print(f"projects changed by a fix: {sum(1 for r in results if r['changed'])}")
    print(f"findings fixed, per code: {dict(sorted(fixed.items()))}")
    print(f"changed files that do not compile: {sum(len(r['broken']) for r in results)}")
    print(f"new warnings or errors after the fix: {sum(len(r['new_serious']) for r in results)}")
    print(f"runs that failed: {sum(1 for r in results if r['error'])}")
    print(f"probe offset == what check implies after the fix: "
          f"{sum(1 for r in results if r['offset'] == r['expected_offset'])}/{len(results)}")
    for result in bad[:20]:
        print("  BAD", json.dumps(result)[:600])
    shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
