"""The runtime check (issue 5 §3), on temporary copies of reference_impl/:
static findings (golden), the probe before and after `fix --apply --unsafe-fixes`,
and the validation loss the fix buys after the same number of optimizer steps.

Everything runs in subprocesses: each copy imports its own ``mm_rec``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "reference_impl"
GOLDEN = Path(__file__).resolve().parent / "golden" / "reference_check.json"
TRAIN = ["mm_rec/scripts/train_base_model.py", "--steps", "50", "--seq-len", "128",
         "--eval-interval", "1000", "--threads", "1"]


def trainaudit(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    # `probe -- python ...` runs the `python` on PATH: this interpreter, as when activated.
    path = os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + os.environ["PATH"]
    return subprocess.run([sys.executable, "-m", "trainaudit", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, "PATH": path})


def copy_reference(folder: Path) -> Path:
    target = folder / "reference_impl"
    shutil.copytree(REFERENCE, target, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    return target


@pytest.fixture(scope="module")
def unfixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_reference(tmp_path_factory.mktemp("unfixed"))


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = copy_reference(tmp_path_factory.mktemp("fixed"))
    # The reference trainer's trainaudit.toml selects every rule, the advice included.
    done = trainaudit(copy, "fix", ".", "--apply", "--unsafe-fixes")
    assert done.returncode == 0, done.stdout + done.stderr
    return copy


def probe(copy: Path, steps: int) -> dict[str, Any]:
    out = copy / f"probe-{steps}.json"
    done = trainaudit(copy, "probe", "--steps", str(steps), "--json", str(out), "--",
                      "python", *TRAIN)
    assert out.exists(), done.stdout + done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["script_exit"] == "stopped", report
    return report


@pytest.fixture(scope="module")
def probe_before(unfixed: Path) -> dict[str, Any]:
    return probe(unfixed, 3)


@pytest.fixture(scope="module")
def probe_after(fixed: Path) -> dict[str, Any]:
    return probe(fixed, 2)


def test_check_reports_the_golden_findings(unfixed: Path) -> None:
    done = trainaudit(unfixed, "check", ".", "--format", "json")
    found = [[f["code"], f["path"], f["line"]] for f in json.loads(done.stdout)["findings"]]
    assert found == json.loads(GOLDEN.read_text())
    assert done.returncode == 1


def test_probe_measures_the_reviewed_bugs(probe_before: dict[str, Any]) -> None:
    assert probe_before["label_offset"] == 2
    assert probe_before["micro_batches_per_step"] == 1
    assert probe_before["autocast_fraction"] == 0
    assert probe_before["checkpointing"] is False
    assert {"TA102", "TA201", "TA301"} <= {f["code"] for f in probe_before["findings"]}


def test_fixed_trainer_checks_clean(fixed: Path) -> None:
    done = trainaudit(fixed, "check", ".", "--fail-on", "warning")
    assert done.returncode == 0, done.stdout
    for path in fixed.rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    again = trainaudit(fixed, "fix", ".", "--unsafe-fixes")
    assert (again.returncode, again.stdout) == (0, "")


def test_probe_measures_the_fix(probe_before: dict[str, Any],
                                probe_after: dict[str, Any]) -> None:
    assert probe_after["label_offset"] == 1
    assert probe_after["wrapped_label_positions"] == 0
    assert probe_after["micro_batches_per_step"] == 8
    # The fixed trainer autocasts where its device is CUDA; on this CPU it keeps float32.
    assert probe_after["autocast_fraction"] == 0
    assert probe_after["checkpointing"] is True
    assert probe_after["batch_size"] == probe_before["batch_size"]
    assert probe_after["sequence_length"] == probe_before["sequence_length"]
    assert probe_after["activation_bytes_per_step"] <= 0.5 * probe_before["activation_bytes_per_step"]
    codes = {f["code"] for f in probe_after["findings"]}
    # TA301 is not listed: the probe cannot yet tell an autocast disabled on this CPU from
    # none at all (issue 12, item 2).
    assert not codes & {"TA101", "TA102", "TA105", "TA201"}


def train_and_evaluate(copy: Path, *extra: str) -> float:
    args = ["--steps", "150", "--seq-len", "128", "--lr", "2e-3", "--warmup-steps", "10",
            "--eval-interval", "1000", "--threads", "1", "--out-dir", "runs", "--seed", "1337",
            *extra]
    done = subprocess.run([sys.executable, "mm_rec/scripts/train_base_model.py", *args],
                          cwd=copy, text=True, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    score = subprocess.run([sys.executable, "mm_rec/evaluate.py", "runs/final.pt",
                            "--seq-len", "128"], cwd=copy, text=True, capture_output=True,
                           timeout=300)
    assert score.returncode == 0, score.stderr[-2000:]
    return float(score.stdout.split("next_token_loss=")[1].split()[0])


def test_fix_lowers_the_validation_loss(unfixed: Path, fixed: Path) -> None:
    # Same optimizer steps, seed and data per step: the fixed trainer runs with its own
    # --accumulation-steps 1, so the gap is the labels' doing, not 8x more data (and the
    # test stays short on a CPU). Measured: 3.13 (double shift) vs 2.28 (fixed).
    before = train_and_evaluate(unfixed)
    after = train_and_evaluate(fixed, "--accumulation-steps", "1")
    assert after < before - 0.3, (before, after)
