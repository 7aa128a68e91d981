"""What every probed child runs: ``python -m trainaudit.probe.bootstrap --out DIR -- SCRIPT ARGS``.

The parent starts it in the interpreter the command names, or a launcher
(torchrun, accelerate launch) starts it once per rank. It probes the script in
its own process and writes ``DIR/rank-N.json`` (N from ``RANK``, else 0): the
report, or ``{"error": ...}`` when the probe could not run at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def main(argv: list[str] | None = None) -> int:
    """Probe the script named after ``--``; the exit code is 2 when the probe cannot run it."""
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else __name__}")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--module", action="store_true")
    parser.add_argument("--progress", action="store_true", help="progress lines on rank 0")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    rank = _rank()
    # Imported here, so that a missing torch is reported in the file, not as a traceback.
    from trainaudit.probe import ProbeError, run_probe

    try:
        report = run_probe(command, steps=options.steps, module=options.module,
                           progress=sys.stderr if options.progress and rank == 0 else None)
    except ProbeError as exc:
        _write(options.out, rank, {"error": str(exc)})
        return 2
    report.rank = rank
    _write(options.out, rank, report.to_json())
    return 0


def _write(folder: Path, rank: int, data: dict[str, object]) -> None:
    path = folder / f"rank-{rank}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data), encoding="utf-8")
    partial.replace(path)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # A script's leftover threads (data loader workers, ...) must not keep the rank alive.
    os._exit(code)
