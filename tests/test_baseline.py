"""``check --baseline``: recorded findings pass, new ones fail, and the match is by line
content and occurrence, so it survives edits that move lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainaudit.baseline import fingerprints
from trainaudit.cli import app
from trainaudit.diagnostics import Finding, Severity, Span

TRAIN = (
    "import torch\n"
    "import torch.nn.functional as F\n"
    "\n"
    "scaler = torch.cuda.amp.GradScaler()\n"
    "\n"
    "\n"
    "def loss_fn(logits, input_ids):\n"
    "    labels = torch.roll(input_ids, -1, dims=1)\n"
    "    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))\n"
)

runner = CliRunner()


def check(*args: str) -> tuple[int, list[tuple[str, int]], str]:
    result = runner.invoke(app, ["check", *args, "--format", "json", "--no-cache"])
    findings = []
    if result.stdout.strip():
        findings = [(f["code"], f["line"]) for f in json.loads(result.stdout)["findings"]]
    return result.exit_code, findings, result.stderr


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    monkeypatch.chdir(tmp_path)
    status, _, err = check(".", "--write-baseline", "baseline.json")
    assert status == 0, err
    assert "Recorded 2 finding(s) in baseline.json" in err
    return tmp_path


def test_baseline_file_records_code_path_fingerprint(project: Path) -> None:
    data = json.loads((project / "baseline.json").read_text())
    assert data["version"] == 1
    entries = data["findings"]
    assert [(e["code"], e["path"], e["line"]) for e in entries] == [("TA302", "train.py", 4),
                                                                    ("TA101", "train.py", 8)]
    assert all(len(e["fingerprint"]) == 20 for e in entries)


def test_recorded_findings_do_not_fail(project: Path) -> None:
    status, findings, err = check(".", "--baseline", "baseline.json")
    assert (status, findings) == (0, [])
    assert "2 finding(s) already in the baseline" in err


def test_match_survives_moved_lines(project: Path) -> None:
    moved = TRAIN.replace("import torch\n", "import os\nimport sys\n\n# a comment\nimport torch\n", 1)
    moved = moved.replace("def loss_fn", "def unrelated():\n    return 1\n\n\ndef loss_fn")
    (project / "train.py").write_text(moved)
    assert check(".")[1] == [("TA302", 8), ("TA101", 16)]  # the findings moved
    assert check(".", "--baseline", "baseline.json")[:2] == (0, [])


def test_match_survives_reindentation(project: Path) -> None:
    (project / "train.py").write_text(TRAIN.replace("scaler = torch", "scaler =  torch"))
    assert check(".", "--baseline", "baseline.json")[:2] == (0, [])


def test_new_finding_fails(project: Path) -> None:
    added = TRAIN + (
        "\n\ndef other_loss(logits, tokens):\n"
        "    targets = torch.roll(tokens, -1, dims=1)\n"
        "    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))\n"
    )
    (project / "train.py").write_text(added)
    status, findings, _ = check(".", "--baseline", "baseline.json")
    assert (status, findings) == (1, [("TA101", 13)])


def test_editing_the_flagged_line_makes_it_new(project: Path) -> None:
    (project / "train.py").write_text(TRAIN.replace("roll(input_ids, -1, dims=1)",
                                                    "roll(input_ids, shifts=-1, dims=1)"))
    status, findings, _ = check(".", "--baseline", "baseline.json")
    assert (status, findings) == (1, [("TA101", 8)])


def test_a_second_identical_finding_is_new(project: Path) -> None:
    twice = TRAIN.replace("scaler = torch.cuda.amp.GradScaler()\n",
                          "scaler = torch.cuda.amp.GradScaler()\nscaler = torch.cuda.amp.GradScaler()\n")
    (project / "train.py").write_text(twice)
    status, findings, _ = check(".", "--baseline", "baseline.json")
    assert (status, findings) == (1, [("TA302", 5)])


def test_baseline_works_from_another_directory(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")
    assert check("..", "--baseline", "../baseline.json")[:2] == (0, [])


def test_fixed_findings_just_disappear(project: Path) -> None:
    (project / "train.py").write_text("import torch\n")
    assert check(".", "--baseline", "baseline.json")[:2] == (0, [])


@pytest.mark.parametrize("content", ["not json", '{"version": 99, "findings": []}',
                                     '{"version": 1, "findings": [{"code": "TA101"}]}'])
def test_bad_baseline_exits_2(project: Path, content: str) -> None:
    (project / "bad.json").write_text(content)
    assert check(".", "--baseline", "bad.json")[0] == 2


def test_missing_baseline_exits_2(project: Path) -> None:
    status, _, err = check(".", "--baseline", "nope.json")
    assert status == 2
    assert "--write-baseline" in err


def test_fingerprint_ignores_line_numbers_and_counts_occurrences() -> None:
    def finding(line: int) -> Finding:
        return Finding("TA302", "deprecated-amp-api", Severity.WARNING, "t.py",
                       Span(line, 1, line, 5), "m")

    lines = ["a = 1", "x = f()", "x  =  f()", "y = 2", "x = f()"]
    prints = fingerprints([finding(2), finding(3), finding(5), finding(4)], lambda _: lines)
    assert prints[0] != prints[1]  # same content, second occurrence
    assert prints[2] not in prints[:2]  # third occurrence
    assert prints[3] not in prints[:3]
    shifted = ["# new", *lines]
    assert fingerprints([finding(3), finding(4), finding(6), finding(5)], lambda _: shifted) == prints
