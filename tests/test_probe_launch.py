"""`trainaudit probe -- CMD` as people type CMD: interpreter flags, -m, torchrun, accelerate
launch, another interpreter; `--json` into a new folder; `probe diff`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from trainaudit.probe import run_probe
from trainaudit.probe.diff import diff_reports
from trainaudit.probe.launch import TORCHRUN, LaunchPlan, plan_launch
from trainaudit.probe.report import ProbeError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "probe_scripts"
HERE = os.path.dirname(os.path.abspath(sys.executable))


def trainaudit(*args: str, cwd: Path = SCRIPTS) -> subprocess.CompletedProcess[str]:
    # `python` on PATH is this interpreter, as in an activated virtual environment.
    env = {**os.environ, "PATH": HERE + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run([sys.executable, "-m", "trainaudit", *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=300, check=False)


def probe_json(tmp_path: Path, *command: str, steps: int = 2) -> tuple[dict[str, Any], str]:
    report = tmp_path / "report.json"
    done = trainaudit("probe", "--steps", str(steps), "--json", str(report), "--", *command)
    assert report.is_file(), done.stdout + done.stderr
    return json.loads(report.read_text()), done.stdout


# ------------------------------------------------------------ reading CMD


def test_plan_python_flags_and_module() -> None:
    assert plan_launch(["python", "-u", "-X", "dev", "-Wignore", "train.py", "--lr", "1"]) == (
        LaunchPlan("train.py", ["--lr", "1"], interpreter_flags=["-u", "-X", "dev", "-Wignore"]))
    assert plan_launch(["python", "-m", "pkg.train", "-u"]) == LaunchPlan(
        "pkg.train", ["-u"], module=True)
    assert plan_launch(["python", "-um", "pkg.train"]) == LaunchPlan(
        "pkg.train", [], module=True, interpreter_flags=["-u"])
    assert plan_launch(["train.py", "-x"]) == LaunchPlan("train.py", ["-x"])
    assert plan_launch(["train.py"]).in_process
    assert not plan_launch(["python", "-u", "train.py"]).in_process
    with pytest.raises(ProbeError, match="not -c code"):
        plan_launch(["python", "-c", "print(1)"])


def test_plan_torchrun_splits_its_options_from_the_script() -> None:
    plan = plan_launch(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "pkg.train",
                        "--nproc-per-node", "7"])
    assert plan == LaunchPlan("pkg.train", ["--nproc-per-node", "7"], module=True,
                              launcher=TORCHRUN,
                              launcher_flags=["--standalone", "--nproc-per-node", "2"])
    assert plan.child_command(["--steps", "2"]) == [
        sys.executable, "-m", TORCHRUN, "--standalone", "--nproc-per-node", "2",
        "-m", "trainaudit.probe.bootstrap", "--steps", "2", "--module", "--", "pkg.train",
        "--nproc-per-node", "7"]
    same = plan_launch(["python", "-m", TORCHRUN, "--nproc_per_node=2", "train.py", "-v"])
    assert same == LaunchPlan("train.py", ["-v"], launcher=TORCHRUN,
                              launcher_flags=["--nproc_per_node=2"])


def test_plan_rejects_what_it_cannot_probe() -> None:
    with pytest.raises(ProbeError, match="no-python"):
        plan_launch(["torchrun", "--no-python", "echo"])
    with pytest.raises(ProbeError, match=r"no such interpreter: python9\.9"):
        plan_launch(["python9.9", "train.py"])
    with pytest.raises(ProbeError, match="accelerate launch"):
        plan_launch(["accelerate", "config"])


# ------------------------------------------------------------- launching


def test_python_with_interpreter_flags(tmp_path: Path) -> None:
    report, stdout = probe_json(tmp_path, "python", "-u", "-W", "ignore", "accumulate.py",
                                "--undivided", steps=3)
    assert (report["script_exit"], report["optimizer_steps"]) == ("stopped", 3)
    assert report["micro_batches_per_step"] == 4
    assert [f["code"] for f in report["findings"]] == ["TA202", "TA301"]
    assert "micro-batches per step       │ 4 (12 backward calls)" in stdout


def test_python_dash_m(tmp_path: Path) -> None:
    report, _ = probe_json(tmp_path, "python", "-m", "module_train", "--steps", "3", steps=5)
    assert (report["script_exit"], report["optimizer_steps"]) == ("finished", 3)
    assert report["label_offset"] == 1


def test_torchrun_two_ranks_each_probed_and_merged(tmp_path: Path) -> None:
    report, stdout = probe_json(tmp_path, "torchrun", "--standalone", "--nproc-per-node", "2",
                                "ddp_train.py", "--seq-len", "16")
    assert [rank["rank"] for rank in report["ranks"]] == [0, 1]
    assert all(rank["optimizer_steps"] == 2 for rank in report["ranks"])
    assert all(rank["world_size"] == 2 for rank in report["ranks"])
    assert report["backward_calls"] == 4  # 2 steps on each of 2 ranks
    assert report["label_positions_checked"] == 2 * 4 * 15
    assert report["tokens_per_step"] == 2 * 4 * 16
    assert report["label_offset"] == 1
    assert "merged (2 ranks)" in stdout and "rank 1" in stdout


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                    reason="accelerate is not installed")
def test_accelerate_launch_one_cpu_process(tmp_path: Path) -> None:
    report, _ = probe_json(tmp_path, "accelerate", "launch", "--cpu", "--num_processes", "1",
                           "--num_machines", "1", "--mixed_precision", "no",
                           "--dynamo_backend", "no", "ddp_train.py", "--seq-len", "16")
    assert (report["script_exit"], report["optimizer_steps"]) == ("stopped", 2)
    assert report["ranks"] == []
    assert report["tokens_per_step"] == 4 * 16


def _bare_interpreter(folder: Path) -> str:
    venv.create(folder, with_pip=False)
    return str(folder / "bin" / "python")


def test_another_interpreter_without_trainaudit_is_exit_2(tmp_path: Path) -> None:
    python = _bare_interpreter(tmp_path / "bare")
    done = trainaudit("probe", "--", python, "which_python.py", str(tmp_path / "ran"))
    assert done.returncode == 2
    assert f"{python} cannot import trainaudit" in done.stderr
    assert f"{python} -m pip install '{ROOT}[torch]'" in " ".join(done.stderr.split())
    assert not (tmp_path / "ran").exists()  # nothing ran in this interpreter instead


def test_another_interpreter_runs_the_probe_inside_it(tmp_path: Path) -> None:
    python = _bare_interpreter(tmp_path / "other")
    # The other environment sees this one's packages, yet is its own interpreter.
    site = next((tmp_path / "other" / "lib").glob("python*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "ours.pth").write_text("\n".join([*ours, str(ROOT)]) + "\n")
    report, _ = probe_json(tmp_path, python, "which_python.py", str(tmp_path / "ran"))
    assert (tmp_path / "ran").read_text() == python
    assert report["optimizer_steps"] == 2


def test_json_into_a_missing_folder_is_created_before_the_run(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "r.json"
    done = trainaudit("probe", "--steps", "1", "--json", str(target), "--", "python",
                      "correct_shift.py", "--steps", "2")
    assert done.returncode == 1, done.stderr  # TA201, TA301
    assert json.loads(target.read_text())["optimizer_steps"] == 1


def test_json_that_cannot_be_written_fails_before_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = trainaudit("probe", "--json", str(blocker / "r.json"), "--", "python",
                      "which_python.py", str(tmp_path / "ran"))
    assert done.returncode == 2
    assert "cannot create its folder" in done.stderr
    assert not (tmp_path / "ran").exists()


# ------------------------------------------------------------------ diff


def test_probe_diff_table(tmp_path: Path) -> None:
    before = run_probe([str(SCRIPTS / "correct_shift.py"), "--steps", "9"], steps=3)
    after = run_probe([str(SCRIPTS / "amp_off_on_cpu.py")], steps=3)
    rows = {row.name: row for row in diff_reports(before, after)}
    assert list(rows) == ["label offset", "micro-batches per step", "autocast share",
                          "checkpointing", "activation memory per step", "step time",
                          "tokens/s", "time per token", "CPU time per token"]
    assert (rows["label offset"].before, rows["label offset"].after) == ("1", "1")
    assert rows["label offset"].reading == "unchanged"
    assert rows["autocast share"].before == "0%; no autocast"
    assert rows["autocast share"].after == "0%; autocast present but disabled on this device (cpu)"
    assert rows["autocast share"].reading.startswith(
        "autocast is in the code but off on cpu, where it would only be emulated")
    assert rows["checkpointing"].reading == "unchanged"
    accumulated = run_probe([str(SCRIPTS / "accumulate.py")], steps=3)
    micro = {row.name: row for row in diff_reports(before, accumulated)}["micro-batches per step"]
    assert (micro.before, micro.after) == ("1", "4")
    assert micro.reading == ("4x the data per optimizer step (512 tokens): a step takes about "
                             "4x as long, so compare time per token, not step time")
    for name, report in (("before", before), ("after", accumulated)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report.to_json()))
    done = trainaudit("probe", "diff", str(tmp_path / "before.json"), str(tmp_path / "after.json"))
    assert done.returncode == 0, done.stderr
    assert "trainaudit probe diff" in done.stdout
    assert "what it means" in done.stdout
    bad = trainaudit("probe", "diff", str(tmp_path / "before.json"))
    assert bad.returncode == 2
    assert "takes two reports" in bad.stderr
