"""The oldest torch a project declares (issue 18, item 6): a "safe" TA302 rename to an API
that torch release lacks is no fix at all there."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import chdir
from trainaudit.cli import app
from trainaudit.requirements import declared_torch_floor, lower_bound


@pytest.mark.parametrize(("requirement", "floor"), [
    ("torch>=1.13,<3", (1, 13)),
    ("torch (>=1.13)", (1, 13)),
    ('torch[opt-einsum]~=2.1; python_version > "3.9"', (2, 1)),
    ("torch==2.0.1", (2, 0, 1)),
    ("torch >1.12, !=1.13.0", (1, 12)),
    ("torch", None),
    ("torch<2", None),
    ("torchvision>=0.15", None),
])
def test_lower_bound_of_a_requirement(requirement: str, floor: tuple[int, ...] | None) -> None:
    assert lower_bound(requirement) == floor


@pytest.mark.parametrize(("name", "text"), [
    ("pyproject.toml", '[project]\nname = "p"\ndependencies = ["numpy", "torch>=1.13"]\n'),
    ("pyproject.toml", '[tool.poetry.dependencies]\npython = "^3.10"\ntorch = "^1.13"\n'),
    ("setup.cfg", "[options]\ninstall_requires =\n    numpy\n    torch>=1.13\n"),
    ("setup.py", 'from setuptools import setup\nsetup(name="p", install_requires=["torch>=1.13"])\n'),
    ("requirements.txt", "# pinned elsewhere\nnumpy\ntorch>=1.13  # cuda 11\n"),
])
def test_declared_floor_from_each_packaging_file(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    (tmp_path / "pkg").mkdir()
    assert declared_torch_floor(tmp_path / "pkg") == (1, 13)


def test_the_lowest_declaration_wins(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = ["torch>=2.4"]\n')
    (tmp_path / "requirements-old.txt").write_text("torch==1.13.1\n")
    assert declared_torch_floor(tmp_path) == (1, 13, 1)


DEPRECATED = '''\
    import torch
    from torch.cuda.amp import GradScaler

    scaler = GradScaler()


    @torch.cuda.amp.custom_fwd
    def forward(x):
        with torch.cuda.amp.autocast():
            return x * 2
'''


def _check_json(root: Path) -> list[tuple[int, str | None]]:
    with chdir(root):
        result = CliRunner().invoke(app, ["check", ".", "--select", "TA302", "--format", "json",
                                          "--no-cache"])
    return [(f["line"], f["fix"]) for f in json.loads(result.stdout)["findings"]]


def test_rename_needing_a_newer_torch_than_declared_is_not_fixed(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = ["torch>=1.13"]\n')
    (tmp_path / "train.py").write_text(textwrap.dedent(DEPRECATED))
    # GradScaler (2.3) and custom_fwd (2.4): no fix; torch.autocast exists since 1.10.
    assert _check_json(tmp_path) == [(4, None), (7, None), (9, "safe")]
    with chdir(tmp_path):
        result = CliRunner().invoke(app, ["check", ".", "--select", "TA302", "--no-cache"])
        assert ("the rewrite needs torch>=2.3 and the project admits torch 1.13"
                in result.stdout)
        CliRunner().invoke(app, ["fix", ".", "--apply", "--no-cache"])
    out = (tmp_path / "train.py").read_text()
    assert "torch.amp" not in out and "GradScaler()" in out and "@torch.cuda.amp.custom_fwd" in out
    assert 'with torch.autocast("cuda"):' in out


def test_rename_is_safe_where_the_project_requires_a_new_torch(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = ["torch>=2.4"]\n')
    (tmp_path / "train.py").write_text(textwrap.dedent(DEPRECATED))
    assert _check_json(tmp_path) == [(4, "safe"), (7, "safe"), (9, "safe")]


def test_configured_version_overrides_the_declaration(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = ["torch>=2.4"]\n'
        '[tool.trainaudit]\nmin-torch-version = "2.2"\n')
    (tmp_path / "train.py").write_text(textwrap.dedent(DEPRECATED))
    assert _check_json(tmp_path) == [(4, None), (7, None), (9, "safe")]


FP16_NO_SCALER = '''\
    import torch
    import torch.nn.functional as F


    def train(model, loader, optimizer):
        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x.cuda()), y.cuda())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
'''


@pytest.mark.parametrize(("declared", "fix"), [("torch>=1.13", None), ("torch>=2.3", "corrective")])
def test_added_grad_scaler_respects_the_declared_torch(tmp_path: Path, declared: str,
                                                       fix: str | None) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "p"\ndependencies = ["{declared}"]\n')
    (tmp_path / "train.py").write_text(textwrap.dedent(FP16_NO_SCALER))
    with chdir(tmp_path):
        result = CliRunner().invoke(app, ["check", ".", "--select", "TA305", "--format", "json",
                                          "--no-cache"])
    assert [(f["code"], f["fix"]) for f in json.loads(result.stdout)["findings"]] == [("TA305", fix)]
