"""demo.sh reads the same piped as on a terminal (issue 19, item 7): no ANSI codes in a
pipe or a file, Python's output unbuffered so stdout and stderr keep their order, and
probes long enough for a median with a spread."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "demo.sh"


def _header_lines() -> str:
    """The lines of demo.sh that define how a step header is printed."""
    lines = DEMO.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.startswith(("if [ -t 1 ]", "step() ")))


def test_step_headers_are_plain_text_in_a_pipe() -> None:
    script = _header_lines() + '\nstep "1. trainaudit check ."\n'
    assert "step() " in script and "-t 1" in script
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout == "\n== 1. trainaudit check .\n"


def test_output_keeps_its_order_and_probes_time_several_steps() -> None:
    text = DEMO.read_text(encoding="utf-8")
    assert "export PYTHONUNBUFFERED=1" in text
    steps = [int(n) for n in re.findall(r"trainaudit probe --steps (\d+)", text)]
    assert len(steps) == 2 and min(steps) >= 4  # 3 or more timed steps after the warm-up
