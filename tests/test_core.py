"""The core issue's acceptance: the reviewed tree, fixes, bad input, config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainaudit.cli import app

DATA = '''import torch
from torch.utils.data import Dataset


class TextDataset(Dataset):
    def __init__(self, ids, seq_len):
        self.ids = ids
        self.seq_len = seq_len

    def __len__(self):
        return len(self.ids) // self.seq_len

    def __getitem__(self, idx):
        input_ids = self.ids[idx * self.seq_len:(idx + 1) * self.seq_len]
        labels = torch.roll(input_ids, shifts=-1, dims=0)
        labels[-1] = -100
        return {"input_ids": input_ids, "labels": labels}
'''

TRAIN = '''import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pkg.data.text_data_loader import TextDataset


def train_step(model, batch, optimizer, scheduler, device):
    optimizer.zero_grad()
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    logits = model(input_ids)
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                           ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss.item()


def train(model, ids, device):
    loader = DataLoader(TextDataset(ids, 64), batch_size=4, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 100)
    for batch in loader:
        train_step(model, batch, optimizer, scheduler, device)
'''

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout


@pytest.fixture
def reviewed_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pkg" / "data").mkdir(parents=True)
    (tmp_path / "pkg" / "scripts").mkdir(parents=True)
    for folder in ("pkg", "pkg/data", "pkg/scripts"):
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "pkg/data/text_data_loader.py").write_text(DATA)
    (tmp_path / "pkg/scripts/train.py").write_text(TRAIN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def findings(*extra: str) -> list[dict[str, object]]:
    code, out = run("check", ".", "--select", "TA1", "--no-config", "--format", "json", *extra)
    payload = json.loads(out)
    assert code == (1 if payload["findings"] else 0)
    return list(payload["findings"])


def test_reviewed_tree_reports_the_double_shift_only(reviewed_tree: Path) -> None:
    # The roll is neutralised, but the labels are shifted again at the loss: that is
    # TA102, whose fix removes the shift; TA103's restyling is not offered.
    found = findings()
    assert [(f["code"], f["path"], f["line"]) for f in found] == [
        ("TA102", "pkg/data/text_data_loader.py", 15),
    ]
    double = found[0]
    assert double["severity"] == "error" and double["fix"] == "corrective"
    # The way the labels went, in order: the data set's item, the loader, the second
    # shift, the loss.
    assert [(r["path"], r["line"], r["message"]) for r in double["related"]] == [
        ("pkg/data/text_data_loader.py", 13, "returned by TextDataset.__getitem__"),
        ("pkg/scripts/train.py", 25, "batch of this loader"),
        ("pkg/scripts/train.py", 14, "second shift here"),
        ("pkg/scripts/train.py", 15, "the loss scores position t against token t+2"),
    ]


def test_unmasked_roll_is_circular(reviewed_tree: Path) -> None:
    data = reviewed_tree / "pkg/data/text_data_loader.py"
    data.write_text(DATA.replace("        labels[-1] = -100\n", ""))
    assert {f["code"] for f in findings()} == {"TA101", "TA102"}


def test_wrapped_position_set_to_a_token(reviewed_tree: Path) -> None:
    data = reviewed_tree / "pkg/data/text_data_loader.py"
    data.write_text(DATA.replace("labels[-1] = -100", "labels[-1] = 0"))
    assert {f["code"] for f in findings()} == {"TA102", "TA104"}


@pytest.mark.parametrize("variant", ["reviewed", "unmasked", "zero"])
def test_fix_apply_is_clean_and_idempotent(reviewed_tree: Path, variant: str) -> None:
    data = reviewed_tree / "pkg/data/text_data_loader.py"
    if variant == "unmasked":
        data.write_text(DATA.replace("        labels[-1] = -100\n", ""))
    elif variant == "zero":
        data.write_text(DATA.replace("labels[-1] = -100", "labels[-1] = 0"))
    code, out = run("fix", ".", "--select", "TA1", "--no-config")
    assert code == 1 and "+++ b/pkg/data/text_data_loader.py" in out
    assert "TA102: removed the label shift" in out
    code, _ = run("fix", ".", "--apply", "--select", "TA1", "--no-config")
    assert code == 0
    compile(data.read_text(), str(data), "exec")
    assert findings() == []
    assert "labels = input_ids.clone()" in data.read_text()
    assert run("fix", ".", "--select", "TA1", "--no-config") == (0, "")


def test_bad_input_is_reported_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.py").write_text("import torch\nlabels = torch.roll(x, -1\n")
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "latin.py").write_bytes(b"import torch\nlabels = 'caf\xe9'\n")
    big = "import torch\n" + "x = [1, 2, 3]  # padding line for a large file\n" * 110_000
    (tmp_path / "big.py").write_text(big)
    assert (tmp_path / "big.py").stat().st_size > 5_000_000
    (tmp_path / "loop").mkdir()
    os.symlink(tmp_path / "loop", tmp_path / "loop" / "again")
    (tmp_path / "buggy.py").write_text(
        "import torch\nimport torch.nn.functional as F\n\n\ndef f(model, x):\n"
        "    y = torch.roll(x, -1, 1)\n"
        "    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["check", ".", "--no-config", "--format", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    payload = json.loads(result.stdout)
    got = {(f["path"], f["code"]) for f in payload["findings"]}
    assert ("broken.py", "TA001") in got
    assert ("latin.py", "TA001") in got
    assert ("buggy.py", "TA101") in got
    assert not any(p in ("empty.py", "big.py") for p, _ in got)
    assert payload["summary"]["files_seen"] == 5
    assert result.exit_code == 1


def test_fix_keeps_encoding_and_line_endings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ("# -*- coding: latin-1 -*-\nimport torch\n\n\ndef make(input_ids):\n"
              "    # caf\xe9\n    labels = torch.roll(input_ids, -1, 0)\n    labels[-1] = -100\n"
              "    return input_ids, labels\n")
    path = tmp_path / "data.py"
    path.write_bytes(source.replace("\n", "\r\n").encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    code, _ = run("fix", "data.py", "--apply", "--no-config", "--extend-select", "TA103")
    assert code == 0
    raw = path.read_bytes()
    assert b"caf\xe9" in raw and raw.count(b"\r\n") == raw.count(b"\n")
    assert b"labels[:-1] = input_ids[1:]\r\n" in raw


def test_suppression_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = ("import torch\nimport torch.nn.functional as F\n\n\ndef f(model, x):\n"
            "    y = torch.roll(x, -1, 1){comment}\n"
            "    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())\n")
    (tmp_path / "a.py").write_text(body.format(comment="  # trainaudit: ignore[TA101]"))
    (tmp_path / "b.py").write_text(body.format(comment="  # noqa"))
    (tmp_path / "c.py").write_text(body.format(comment=""))
    (tmp_path / "d.py").write_text(body.format(comment=""))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.trainaudit]\nper-file-ignores = {"d.py" = ["TA1"]}\nfail-on = "error"\n')
    monkeypatch.chdir(tmp_path)
    code, out = run("check", ".", "--format", "json", "--select", "TA1")
    assert code == 1
    assert [f["path"] for f in json.loads(out)["findings"]] == ["c.py"]
    code, out = run("check", ".", "--format", "json", "--ignore", "TA101", "--select", "TA1")
    assert (code, json.loads(out)["findings"]) == (0, [])
    (tmp_path / "pyproject.toml").write_text("[tool.trainaudit]\nselct = ['TA1']\n")
    code, _ = run("check", ".")
    assert code == 2
    code, _ = run("check", ".", "--no-config", "--select", "TA9")
    assert code == 2
    code, _ = run("check", "does-not-exist.py", "--no-config")
    assert code == 2
