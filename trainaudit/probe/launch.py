"""Read a probe command the way people type it, and say where the probe must run.

``trainaudit probe -- CMD`` takes ``python [flags] script.py ARGS``, ``python -m
pkg.mod ARGS``, ``torchrun [flags] script.py|-m mod ARGS``, ``python -m
torch.distributed.run ...`` and ``accelerate launch [flags] script.py ARGS``.
A plain script in this interpreter runs in this process; anything else (flags
for the interpreter, another interpreter, a launcher) runs
``python -m trainaudit.probe.bootstrap`` in a child, under the launcher when
there is one, so every rank is probed inside the interpreter the command names.

Nothing here imports torch; the launchers' own option parsers are imported
only to split their options from the script's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainaudit.probe.report import ProbeError

BOOTSTRAP = "trainaudit.probe.bootstrap"
TORCHRUN = "torch.distributed.run"
ACCELERATE = "accelerate.commands.launch"
_INTERPRETER_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)?)?(\.exe)?$")
# Interpreter options that take a value as the next argument.
_VALUE_FLAGS = {"-X", "-W", "--check-hash-based-pycs"}


@dataclass(frozen=True)
class LaunchPlan:
    """Where and how to run the probed script.

    ``interpreter`` is None for this one; ``launcher`` the module of a
    multi-process launcher (``torch.distributed.run``), or None.
    """

    target: str
    args: list[str]
    module: bool = False
    interpreter: str | None = None
    interpreter_flags: list[str] = field(default_factory=list)
    launcher: str | None = None
    launcher_flags: list[str] = field(default_factory=list)

    @property
    def in_process(self) -> bool:
        """A plain script or module for this interpreter: run it here, no child."""
        return self.interpreter is None and not self.interpreter_flags and self.launcher is None

    @property
    def python(self) -> list[str]:
        """The interpreter and its flags, as the command named them."""
        return [self.interpreter or sys.executable, *self.interpreter_flags]

    def child_command(self, bootstrap_options: list[str]) -> list[str]:
        """The command that runs the bootstrap (under the launcher) with these options."""
        probed = [*bootstrap_options, *(["--module"] if self.module else []), "--",
                  self.target, *self.args]
        if self.launcher is None:
            return [*self.python, "-m", BOOTSTRAP, *probed]
        return [*self.python, "-m", self.launcher, *self.launcher_flags, "-m", BOOTSTRAP, *probed]


def plan_launch(argv: list[str]) -> LaunchPlan:
    """Read ``argv`` (what follows ``trainaudit probe --``); ProbeError when it cannot be run."""
    if not argv:
        raise ProbeError("give the command to run: trainaudit probe -- python train.py ARGS...")
    first, rest = argv[0], list(argv[1:])
    name = Path(first).name
    if name == "torchrun":
        return _launcher_plan(TORCHRUN, _console_script_interpreter(first), [], rest)
    if name == "accelerate":
        if not rest or rest[0] != "launch":
            raise ProbeError("the probe runs `accelerate launch ...`, not other accelerate commands")
        return _launcher_plan(ACCELERATE, _console_script_interpreter(first), [], rest[1:])
    if _INTERPRETER_NAME.match(name):
        return _python_plan(_interpreter(first), rest)
    if first == "-m":
        if not rest:
            raise ProbeError("-m needs a module name")
        return LaunchPlan(rest[0], rest[1:], module=True)
    return LaunchPlan(first, rest)


def _python_plan(interpreter: str | None, argv: list[str]) -> LaunchPlan:
    """``python [flags] script ARGS`` or ``python [flags] -m module ARGS``."""
    flags: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _VALUE_FLAGS:
            flags += argv[i:i + 2]
            i += 2
            continue
        # Single-letter options cluster (-uB); -X/-W carry their value inline (-Xdev).
        letters = token[1:] if token.startswith("-") and not token.startswith("--") else ""
        if token == "-" or (letters[:1] not in ("X", "W") and "c" in letters):
            raise ProbeError("the probe runs a script or a module (-m), not -c code or stdin")
        if letters.endswith("m") and letters[:1] not in ("X", "W"):
            if i + 1 >= len(argv):
                raise ProbeError("-m needs a module name")
            if len(letters) > 1:
                flags.append(token[:-1])
            module, args = argv[i + 1], argv[i + 2:]
            if module in (TORCHRUN, ACCELERATE):
                return _launcher_plan(module, interpreter, flags, args)
            return LaunchPlan(module, args, module=True, interpreter=interpreter,
                              interpreter_flags=flags)
        if token.startswith("-"):
            flags.append(token)
            i += 1
            continue
        return LaunchPlan(token, argv[i + 1:], interpreter=interpreter, interpreter_flags=flags)
    raise ProbeError("no script to run after the interpreter")


def _launcher_plan(launcher: str, interpreter: str | None, flags: list[str],
                   argv: list[str]) -> LaunchPlan:
    """Split the launcher's own options from the script and its arguments."""
    parser = _launcher_parser(launcher)
    try:
        parsed = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed why
        raise ProbeError(f"cannot read the {_launcher_name(launcher)} options: {argv}") from exc
    if getattr(parsed, "no_python", False):
        raise ProbeError("the probe runs Python scripts; --no-python has none to probe")
    script_args = list(parsed.training_script_args)
    cut = len(argv) - len(script_args) - 1
    # The bootstrap is the module every rank runs; the script's own -m goes to it.
    dropped = {"-m", "--module", "--run-path", "--run_path"}
    own = [token for token in argv[:cut] if token not in dropped]
    return LaunchPlan(argv[cut], script_args, module=bool(getattr(parsed, "module", False)),
                      interpreter=interpreter, interpreter_flags=flags, launcher=launcher,
                      launcher_flags=own)


def _launcher_name(launcher: str) -> str:
    return "torchrun" if launcher == TORCHRUN else "accelerate launch"


def _launcher_parser(launcher: str) -> argparse.ArgumentParser:
    try:
        module = importlib.import_module(launcher)
    except ImportError as exc:
        package = "torch" if launcher == TORCHRUN else "accelerate"
        raise ProbeError(f"{_launcher_name(launcher)} needs {package}, which this interpreter "
                         f"({sys.executable}) cannot import: pip install {package}") from exc
    make: Callable[[], argparse.ArgumentParser] = getattr(
        module, "get_args_parser" if launcher == TORCHRUN else "launch_command_parser")
    return make()


def _same_environment(executable: str) -> bool:
    # Same bin folder, symlinks not followed: a venv's python links to the base interpreter.
    here = os.path.dirname(os.path.abspath(sys.executable))
    return os.path.dirname(os.path.abspath(executable)) == here


def _interpreter(name: str) -> str | None:
    """The interpreter ``name`` runs (None: this one); ProbeError when there is none."""
    found = shutil.which(name)
    if found is None:
        raise ProbeError(f"no such interpreter: {name}")
    return None if _same_environment(found) else found


def _console_script_interpreter(name: str) -> str | None:
    """The interpreter a console script such as torchrun starts (None: this one)."""
    found = shutil.which(name)
    if found is None or _same_environment(found):
        return None
    try:
        with open(found, "rb") as script:
            line = script.readline(512).decode("utf-8", "replace")
    except OSError:
        return None
    words = line[2:].split() if line.startswith("#!") else []
    if words and Path(words[0]).name == "env" and len(words) > 1:
        words = [shutil.which(words[1]) or words[1]]
    if not words or not _INTERPRETER_NAME.match(Path(words[0]).name):
        raise ProbeError(f"cannot tell which Python {found} runs: name the interpreter instead "
                         f"(trainaudit probe -- PYTHON -m {TORCHRUN} ...)")
    return None if _same_environment(words[0]) else words[0]
