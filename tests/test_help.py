"""``--help`` that reads at 80 columns (issue 19, item 8): no option name cut, the probe's
``-- CMD`` and ``probe diff`` shown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = [[], ["check"], ["fix"], ["rules"], ["explain"], ["probe"]]


def help_text(*command: str, columns: int = 80) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-m", "trainaudit", *command, "--help"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "trainaudit")
def test_help_fits_80_columns_and_names_every_option_whole(command: list[str]) -> None:
    text = help_text(*command)
    assert [line for line in text.splitlines() if len(line) > 80] == []
    assert "…" not in text and "╭" not in text  # nothing cut, no panels


def test_check_help_lists_the_long_option_names_whole() -> None:
    text = help_text("check")
    for name in ("--unsafe-fixes / --no-unsafe-fixes", "--force-exclude",
                 "--project-context / --no-project-context", "--extend-select"):
        assert name in text


def test_probe_help_shows_the_command_and_diff() -> None:
    text = help_text("probe")
    assert "trainaudit probe [OPTIONS] -- CMD [ARGS]... | diff" in text.splitlines()[0]
    assert "trainaudit probe -- torchrun --nproc-per-node 2 train.py ARGS" in text
    assert "trainaudit probe diff before.json after.json" in text
