"""How fast could any `ast`-based checker be on a tree? A floor for `trainaudit check`.

Times, with the same number of processes as `trainaudit check` (``--cpus``, default 2),
in one run on the same files:

- read: reading every file and running trainaudit's prefilter on its bytes;
- parse passed: that, plus ``ast.parse`` of the files the prefilter lets through
  (what trainaudit must parse, before any rule runs);
- parse all: reading and ``ast.parse`` of every file (a checker without a prefilter);
- trainaudit: ``trainaudit check --no-cache`` itself, for comparison.

The difference between "parse passed" and "trainaudit" is what the rules cost; "parse
passed" is what a faster rule engine could not go below without parsing fewer files.

    python benchmarks/parse_floor.py                  # the installed torch package
    python benchmarks/parse_floor.py PATH --cpus 2
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_check import measure, torch_package  # noqa: E402  (repo root on the path)
from trainaudit.config import Config  # noqa: E402
from trainaudit.engine import Analyzer, settings_for  # noqa: E402

_ANALYZER: Analyzer | None = None


def _init() -> None:
    global _ANALYZER
    _ANALYZER = Analyzer(settings_for(Config()))


def _work(args: tuple[list[str], str]) -> tuple[int, int]:
    """(files parsed, bytes parsed) for one chunk, in one of the modes."""
    paths, mode = args
    assert _ANALYZER is not None
    parsed = size = 0
    for path in paths:
        data = Path(path).read_bytes()
        passed = bool(_ANALYZER.readers(data))
        if mode == "read" or (mode == "passed" and not passed):
            continue
        try:
            ast.parse(data)
        except (SyntaxError, ValueError):
            pass
        parsed += 1
        size += len(data)
    return parsed, size


def _s(seconds: float | None) -> str:
    return "timed out" if seconds is None else f"{seconds:.2f}"


def _timed(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    times: list[float] = []
    result: object = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = args.path or torch_package()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cpus]))
    files = sorted(str(p) for p in root.rglob("*.py") if p.is_file())
    # Largest first, small chunks: as the engine hands them out.
    files.sort(key=lambda p: -os.stat(p).st_size)
    chunks = [files[i : i + 8] for i in range(0, len(files), 8)]
    total = sum(os.stat(p).st_size for p in files)
    print(f"{root}: {len(files):,} files, {total / 1e6:.1f} MB, {args.cpus} processes")
    print("| step | files parsed | MB parsed | seconds |")
    print("|---|---:|---:|---:|")
    with ProcessPoolExecutor(args.cpus, initializer=_init) as pool:
        for mode in ("read", "passed", "all"):
            seconds, counts = _timed(
                lambda mode=mode: [sum(x) for x in zip(*pool.map(_work, [(c, mode) for c in chunks]),
                                                       strict=True)], args.repeat)
            parsed, size = counts  # type: ignore[misc]
            label = {"read": "read + prefilter", "passed": "+ parse what passes",
                     "all": "read + parse every file"}[mode]
            print(f"| {label} | {parsed:,} | {size / 1e6:.1f} | {seconds:.2f} |")
    command = [sys.executable, "-m", "trainaudit", "check", str(root), "--no-config",
               "--no-cache", "--exit-zero", "-q"]
    seconds, _ = measure(command, repeat=args.repeat, cpus=args.cpus, timeout=600)
    print(f"| trainaudit check --no-cache | | | {_s(seconds)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
