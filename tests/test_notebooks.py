"""Jupyter notebooks (issue 12, item 7): code cells analysed together in order, findings
placed in cells, fixes written back into the cells with outputs and metadata kept,
IPython lines skipped and restored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trainaudit.cli import app
from trainaudit.notebook import Notebook

OUTPUT = {"output_type": "stream", "name": "stdout", "text": ["hello\n"]}
CELLS: list[dict[str, Any]] = [
    {"cell_type": "markdown", "metadata": {}, "source": ["# Training\n", "Notes."]},
    {"cell_type": "code", "execution_count": 1, "metadata": {"tags": ["setup"]}, "outputs": [],
     "source": ["%matplotlib inline\n", "!pip install torch\n", "import torch\n",
                "import torch.nn.functional as F"]},
    {"cell_type": "code", "execution_count": 2, "metadata": {}, "outputs": [OUTPUT],
     "source": ["scaler = torch.cuda.amp.GradScaler()\n", "print('hello')"]},
    {"cell_type": "code", "execution_count": 3, "metadata": {}, "outputs": [],
     "source": "def loss_fn(logits, input_ids):\n"
               "    labels = torch.roll(input_ids, -1, dims=1)\n"
               "    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))\n"
               "torch.roll?"},
    {"cell_type": "code", "execution_count": 4, "metadata": {}, "outputs": [],
     "source": ["%%bash\n", "echo not python (\n"]},
]
METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}


def notebook(cells: list[dict[str, Any]] = CELLS, metadata: dict[str, Any] = METADATA) -> str:
    data = {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "train.ipynb").write_text(notebook(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_findings_name_the_cell(tree: Path) -> None:
    status, out, _ = invoke("check", ".", "--no-cache", "--quiet")
    assert status == 1
    assert out.splitlines() == [
        "train.ipynb:cell 3:1:10: TA302 [warning] `torch.cuda.amp.GradScaler` is deprecated "
        "since torch 2.4 (FutureWarning); use `torch.amp.GradScaler(\"cuda\", ...)`",
        "train.ipynb:cell 4:2:14: TA101 [error] `labels` is made with a circular roll "
        "(shift -1, dims=1) and its last position wraps around to the first token of "
        "`input_ids`; nothing masks it, so the model is trained to predict it. Slice instead "
        "and set the tail to the ignore index.",
    ]


def test_frames_show_the_cell_lines(tree: Path) -> None:
    _, out, _ = invoke("check", "train.ipynb", "--no-cache", "--select", "TA302")
    assert "    1 | scaler = torch.cuda.amp.GradScaler()\n" in out


def test_json_gives_the_cell_and_lines_within_it(tree: Path) -> None:
    _, out, _ = invoke("check", "train.ipynb", "--no-cache", "--format", "json")
    placed = [(f["code"], f["cell"], f["line"], f["column"], f["end_line"])
              for f in json.loads(out)["findings"]]
    assert placed == [("TA302", 3, 1, 10, 1), ("TA101", 4, 2, 14, 2)]
    related = json.loads(out)["findings"][1]["related"][0]
    assert (related["path"], related["cell"], related["line"]) == ("train.ipynb", 4, 3)


def test_fix_writes_cells_back_and_keeps_outputs(tree: Path) -> None:
    status, out, _ = invoke("fix", "train.ipynb", "--no-cache")
    assert status == 1
    assert "--- a/train.ipynb:cell 3\n+++ b/train.ipynb:cell 3\n" in out
    assert "# train.ipynb: TA302: cell 3 line 1: " in out
    assert " torch.roll?\n" in out  # IPython lines shown as written
    assert invoke("fix", "train.ipynb", "--apply", "--no-cache")[0] == 0
    fixed = json.loads((tree / "train.ipynb").read_text(encoding="utf-8"))
    expected = json.loads(notebook())
    expected["cells"][2]["source"] = ["scaler = torch.amp.GradScaler(\"cuda\")\n",
                                      "print('hello')"]
    expected["cells"][3]["source"] = (
        "def loss_fn(logits, input_ids):\n"
        "    labels = input_ids.clone()\n"
        "    labels[..., :-1] = input_ids[..., 1:]\n"
        "    labels[..., -1] = -100\n"
        "    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))\n"
        "torch.roll?")
    assert fixed == expected  # outputs, metadata, magics and the other cells as they were
    assert (tree / "train.ipynb").read_text(encoding="utf-8").startswith('{\n "cells": [\n')
    status, out, _ = invoke("check", "train.ipynb", "--no-cache")
    assert (status, out.startswith("All checks passed.")) == (0, True)


def test_check_fix_on_a_notebook(tree: Path) -> None:
    assert invoke("check", "--fix", ".", "--no-cache")[0] == 0
    assert "torch.amp.GradScaler" in (tree / "train.ipynb").read_text(encoding="utf-8")


def test_ipython_lines_become_placeholders_keeping_line_numbers() -> None:
    source = Notebook.parse(notebook()).source
    assert source.splitlines() == [
        "# trainaudit: cell 2", "pass  # trainaudit: ipython 0", "pass  # trainaudit: ipython 1",
        "import torch", "import torch.nn.functional as F",
        "# trainaudit: cell 3", "scaler = torch.cuda.amp.GradScaler()", "print('hello')",
        "# trainaudit: cell 4", "def loss_fn(logits, input_ids):",
        "    labels = torch.roll(input_ids, -1, dims=1)",
        "    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))",
        "pass  # trainaudit: ipython 2",
        "# trainaudit: cell 5", "# trainaudit: ipython 3", "# trainaudit: ipython 4",
    ]
    nb = Notebook.parse(notebook())
    assert json.loads(nb.with_source(nb.source)) == json.loads(notebook())


def test_not_a_python_notebook_is_skipped(tree: Path) -> None:
    r_kernel = {"kernelspec": {"display_name": "R", "language": "R", "name": "ir"}}
    (tree / "train.ipynb").write_text(notebook(metadata=r_kernel), encoding="utf-8")
    assert invoke("check", ".", "--no-cache")[0] == 0


def test_broken_notebook_is_ta001(tree: Path) -> None:
    (tree / "train.ipynb").write_text('{"cells": [', encoding="utf-8")
    status, out, _ = invoke("check", "train.ipynb", "--no-cache")
    assert status == 1
    assert out.startswith("train.ipynb:1:1: TA001 [error] file cannot be read: not a notebook")


def test_notebooks_are_found_in_folders_and_cached(tree: Path) -> None:
    for _ in range(2):
        status, out, _ = invoke("check", ".", "--format", "json")
        assert status == 1
        assert [f["cell"] for f in json.loads(out)["findings"]] == [3, 4]


def test_shell_lines_continued_with_a_backslash_are_skipped(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cells = [{"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [],
              "source": ["! python prepare.py --data_dir data \\\n",
                         "                     --split train \\\n",
                         "                     --max_len 512\n",
                         "import torch\n"]}]
    (tmp_path / "prep.ipynb").write_text(notebook(cells))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["check", "prep.ipynb", "--format", "json", "--no-cache"])
    assert json.loads(result.stdout)["findings"] == []
    assert result.exit_code == 0
