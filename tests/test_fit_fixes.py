"""Fixes that fit the script (issue 12, item 5): the AMP fix's device, the meaning of the
accumulation fix's loop bound and its logged loss, and the project's line length."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.helpers import check_tree, fix_tree
from trainaudit.cli import app
from trainaudit.config import DEFAULT_FIX_OPTIONS, project_line_length

CPU_ONLY = '''\
import torch
import torch.nn.functional as F


def train(model, loader, optimizer):
    for batch in loader:
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
'''


def fixed(tmp_path: Path, source: str, **changes: Any) -> str | None:
    (tmp_path / "train.py").write_text(textwrap.dedent(source))
    return fix_tree(tmp_path, **changes).get("train.py")


def test_amp_fix_leaves_a_script_that_never_uses_a_gpu(tmp_path: Path) -> None:
    # A script that never names a GPU is CPU code: TA301 does not report it, and the AMP
    # fixer, handed such a finding anyway, writes nothing.
    (tmp_path / "train.py").write_text(CPU_ONLY)
    assert {f.code for f in check_tree(tmp_path, select=("TA301",)).findings} == set()
    assert fixed(tmp_path, CPU_ONLY, select=("TA301",)) is None


def test_amp_fix_with_a_literal_cuda_device_is_always_on(tmp_path: Path) -> None:
    source = CPU_ONLY.replace("model(batch[0])", "model(batch[0].cuda())")
    out = fixed(tmp_path, source, select=("TA301",),
                fix_options={**DEFAULT_FIX_OPTIONS, "autocast-dtype": "float16"})
    assert out is not None
    assert 'with torch.autocast(device_type="cuda", dtype=torch.float16):' in out
    assert '"cuda" == "cuda"' not in out


def test_amp_fix_follows_the_device_choice_and_runs_on_cpu_without_warning(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    source = '''\
        import torch
        import torch.nn.functional as F


        def train(model, batches, optimizer):
            device = "cuda" if torch.cuda.is_available() else "cpu"
            model.to(device)
            seen = []
            model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
            for x, y in batches:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            return seen
    '''
    out = fixed(tmp_path, source, select=("TA301",))
    assert out is not None
    assert 'enabled=torch.device(device).type == "cuda"' in out
    namespace: dict[str, Any] = {}
    exec(compile(out, "train.py", "exec"), namespace)
    model = torch.nn.Linear(4, 3)
    batches = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seen = namespace["train"](model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    assert seen == [torch.float32] * 2  # no GPU here: autocast stays off


def test_generated_lines_fit_the_projects_line_length(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    source = CPU_ONLY.replace("def train(model, loader, optimizer):",
                              "def train(model, loader, optimizer, device=\"cuda\"):").replace(
        "model(batch[0])", "model(batch[0].to(device))")
    (tmp_path / "train.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    for length, lines in ((88, 5), (120, 3), (140, 1)):
        (tmp_path / "pyproject.toml").write_text(f"[tool.ruff]\nline-length = {length}\n")
        assert project_line_length(tmp_path) == length
        result = CliRunner().invoke(app, ["fix", "train.py", "--unsafe-fixes", "--select",
                                          "TA301", "--no-cache"])
        added = [line[1:] for line in result.stdout.splitlines()
                 if line.startswith("+") and not line.startswith("+++")]
        assert max(len(line) for line in added) <= length
        with_lines = added[:added.index(next(a for a in added if "logits" in a or "loss =" in a))]
        assert len(with_lines) == lines, with_lines


def test_line_length_from_black_else_88(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.black]\nline-length = 100\n")
    assert project_line_length(tmp_path) == 100
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert project_line_length(tmp_path) == 88


# -- accumulation: the loop bound keeps its meaning ------------------------------------------

COUNTED = '''\
import torch
import torch.nn.functional as F

batch_size = 4
calls = {"batches": 0, "steps": 0}
device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU script (TA201 reads it)


def get_batch():
    calls["batches"] += 1
    return torch.randn(batch_size, 6), torch.randint(0, 3, (batch_size,))


def train(model, optimizer, max_iters=5):
    for it in range(max_iters):
        x, y = get_batch()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        calls["steps"] += 1
        logged = loss.item()
    return logged
'''

OVER_DATA = COUNTED.replace('''def train(model, optimizer, max_iters=5):
    for it in range(max_iters):
        x, y = get_batch()
''', '''def collate(items):
    calls["batches"] += 1
    return torch.utils.data.default_collate(items)


def train(model, optimizer, max_iters=5):
    data = torch.utils.data.TensorDataset(torch.randn(80, 6), torch.randint(0, 3, (80,)))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=collate)
    for x, y in loader:
''')


def _run(source: str) -> tuple[dict[str, int], float]:
    torch = pytest.importorskip("torch")
    namespace: dict[str, Any] = {}
    exec(compile(source, "train.py", "exec"), namespace)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    logged = namespace["train"](model, torch.optim.SGD(model.parameters(), lr=0.1))
    return dict(namespace["calls"]), float(logged)


@pytest.mark.parametrize(("source", "before", "after", "meaning"), [
    # range(max_iters) counts optimizer steps: still 5, each from 8 micro-batches.
    (COUNTED, {"batches": 5, "steps": 5}, {"batches": 40, "steps": 5}, "counts optimizer steps"),
    # a loop over 20 batches counts batches: still 20, in windows of 8, 8 and 4.
    (OVER_DATA, {"batches": 20, "steps": 20}, {"batches": 20, "steps": 3}, "counts micro-batches"),
], ids=["range-counts-steps", "data-counts-batches"])
def test_accumulation_keeps_what_the_loop_bound_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, before: dict[str, int],
        after: dict[str, int], meaning: str) -> None:
    assert _run(source)[0] == before
    (tmp_path / "train.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["fix", "train.py", "--unsafe-fixes", "--select", "TA201",
                                      "--no-cache"])
    assert "TA201: the loop bound `" in result.stdout and meaning in result.stdout
    out = fix_tree(tmp_path, select=("TA201",))["train.py"]
    calls, logged = _run(out)
    assert calls == after
    assert "window_loss" in out  # the logged loss is the window's mean
    assert logged > 0
