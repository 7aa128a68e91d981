"""The pre-commit hooks, run by real pre-commit (``pre-commit try-repo``).

The hook repository is a committed copy of this working tree (tracked files and
untracked ones git does not ignore), so the test sees the hooks as they are now;
pre-commit builds the hook environment from it with pip (libcst, typer and rich
come from the package index; torch must not be installed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

BUGGY = (
    "import torch\n"
    "import torch.nn.functional as F\n"
    "\n"
    "\n"
    "def loss_fn(logits, input_ids):\n"
    "    labels = torch.roll(input_ids, -1, dims=1)\n"
    "    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))\n"
)
CLEAN = "import torch\n\n\ndef add(a, b):\n    return torch.add(a, b)\n"


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.fail("git is needed to test the pre-commit hooks")
    copy = tmp_path_factory.mktemp("hookrepo")
    listed = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-q", "-m", "snapshot for the pre-commit test")
    return copy


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / "buggy.py").write_text(BUGGY)
    (tmp_path / "clean.py").write_text(CLEAN)
    git(tmp_path, "add", "-A")
    return tmp_path


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never"}
    env.pop("VIRTUAL_ENV", None)
    return env


def try_repo(project: Path, hook_repo: Path, home: Path, hook: str,
             *files: str) -> subprocess.CompletedProcess[str]:
    """``pre-commit try-repo``: how a user tries hooks before adopting them (fresh env each time)."""
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(hook_repo), hook, "--verbose",
         "--files", *files],
        cwd=project, env=_env(home), capture_output=True, text=True, timeout=900)


def run_hook(project: Path, hook_repo: Path, home: Path, hook: str,
             *files: str) -> subprocess.CompletedProcess[str]:
    """``pre-commit run`` with a config naming the hook repository at its commit (env kept)."""
    rev = git(hook_repo, "rev-parse", "HEAD").strip()
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hook_repo}\n    rev: {rev}\n    hooks:\n      - id: {hook}\n")
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", hook, "--verbose", "--files", *files],
        cwd=project, env=_env(home), capture_output=True, text=True, timeout=900)


def test_try_repo_check_hook(project: Path, hook_repo: Path, pre_commit_home: Path) -> None:
    buggy = try_repo(project, hook_repo, pre_commit_home, "trainaudit", "buggy.py", "clean.py")
    assert buggy.returncode == 1, buggy.stdout + buggy.stderr
    assert "Failed" in buggy.stdout
    assert "buggy.py:6:14: TA101" in buggy.stdout
    assert "clean.py:" not in buggy.stdout

    clean = try_repo(project, hook_repo, pre_commit_home, "trainaudit", "clean.py")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Passed" in clean.stdout


def test_hook_environment_has_no_torch(project: Path, hook_repo: Path, pre_commit_home: Path) -> None:
    result = run_hook(project, hook_repo, pre_commit_home, "trainaudit", "clean.py")
    assert result.returncode == 0, result.stdout + result.stderr
    sites = list(pre_commit_home.glob("repo*/py_env-*/lib/python*/site-packages"))
    assert len(sites) == 1, sites
    installed = {p.name.split("-")[0].lower() for p in sites[0].glob("*.dist-info")}
    assert {"trainaudit", "libcst", "typer", "rich"} <= installed
    assert "torch" not in installed and not (sites[0] / "torch").exists()


def test_fix_hook(project: Path, hook_repo: Path, pre_commit_home: Path) -> None:
    fixed = run_hook(project, hook_repo, pre_commit_home, "trainaudit-fix", "buggy.py", "clean.py")
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr  # it changed a file
    assert "files were modified by this hook" in fixed.stdout
    text = (project / "buggy.py").read_text()
    assert "labels[..., :-1] = input_ids[..., 1:]" in text and "torch.roll" not in text
    assert (project / "clean.py").read_text() == CLEAN

    again = run_hook(project, hook_repo, pre_commit_home, "trainaudit", "buggy.py", "clean.py")
    assert again.returncode == 0, again.stdout + again.stderr
    settled = run_hook(project, hook_repo, pre_commit_home, "trainaudit-fix", "buggy.py")
    assert settled.returncode == 0, settled.stdout + settled.stderr


def test_fix_hook_never_applies_feature_fixes(project: Path, hook_repo: Path,
                                              pre_commit_home: Path) -> None:
    # TA301 (no autocast) is advice (info, not in the default selection): select it and
    # fail on info here.
    (project / "pyproject.toml").write_text(
        "[tool.trainaudit]\nselect = [\"ALL\"]\nunsafe-fixes = true\nfail-on = \"info\"\n")
    loop = (
        "import torch\n\n\n"
        "def train(model, loader):\n"
        "    optimizer = torch.optim.AdamW(model.parameters())\n"
        "    for batch in loader:\n"
        "        loss = model(batch.cuda()).mean()\n"
        "        loss.backward()\n"
        "        optimizer.step()\n"
        "        optimizer.zero_grad()\n"
    )
    (project / "loop.py").write_text(loop)
    git(project, "add", "-A")
    check = run_hook(project, hook_repo, pre_commit_home, "trainaudit", "loop.py")
    assert check.returncode == 1 and "TA301" in check.stdout, check.stdout  # a feature finding
    result = run_hook(project, hook_repo, pre_commit_home, "trainaudit-fix", "loop.py")
    assert (project / "loop.py").read_text() == loop, result.stdout  # none of them applied


def test_check_hook_runs_on_notebooks(project: Path, hook_repo: Path, pre_commit_home: Path) -> None:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": BUGGY.splitlines(keepends=True)}
    notebook = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (project / "train.ipynb").write_text(json.dumps(notebook, indent=1) + "\n")
    git(project, "add", "-A")
    result = run_hook(project, hook_repo, pre_commit_home, "trainaudit", "train.ipynb")
    assert result.returncode == 1, result.stdout + result.stderr  # types_or: jupyter
    assert "train.ipynb:cell 1:6:14: TA101" in result.stdout


# -- issue 19: the hooks see the project ------------------------------------------------------

DATA = (
    "from torch.utils.data import Dataset\n"
    "\n"
    "\n"
    "class TokenWindows(Dataset):\n"
    "    def __init__(self, tokens, seq_len):\n"
    "        self.tokens = tokens\n"
    "        self.seq_len = seq_len\n"
    "\n"
    "    def __len__(self):\n"
    "        return len(self.tokens) // self.seq_len\n"
    "\n"
    "    def __getitem__(self, i):\n"
    "        chunk = self.tokens[i * self.seq_len:(i + 1) * self.seq_len + 1]\n"
    "        return {\"input_ids\": chunk[:-1], \"labels\": chunk[1:]}\n"
)
TRAIN = (
    "import torch\n"
    "import torch.nn.functional as F\n"
    "from torch.utils.data import DataLoader\n"
    "\n"
    "from pkg.data import TokenWindows\n"
    "\n"
    "\n"
    "def train(model, tokens):\n"
    "    loader = DataLoader(TokenWindows(tokens, 64), batch_size=4)\n"
    "    optimizer = torch.optim.AdamW(model.parameters())\n"
    "    for batch in loader:\n"
    "        logits = model(batch[\"input_ids\"])\n"
    "        shift_logits = logits[..., :-1, :].reshape(-1, logits.size(-1))\n"
    "        shift_labels = batch[\"labels\"][..., 1:].reshape(-1)\n"
    "        F.cross_entropy(shift_logits, shift_labels).backward()\n"
    "        optimizer.step()\n"
    "        optimizer.zero_grad()\n"
)
DOUBLE_SHIFT = "pkg/data.py:14:52: TA102"


def _cross_file_project(root: Path, others: int) -> None:
    """A data set that shifts its labels, a trainer that shifts them again, and
    ``others`` unrelated modules that pre-commit may put in other processes."""
    git(root, "init", "-q")
    (root / "pkg").mkdir()
    (root / "pkg/__init__.py").write_text("")
    (root / "pkg/data.py").write_text(DATA)
    (root / "pkg/train.py").write_text(TRAIN)
    for number in range(others):
        (root / f"pkg/util_{number:02d}.py").write_text(CLEAN)
    git(root, "add", "-A")


@pytest.mark.parametrize("others", [12, 16, 20, 24, 30])
def test_all_files_reports_the_cross_file_double_shift_whatever_the_split(
        tmp_path: Path, hook_repo: Path, pre_commit_home: Path, others: int) -> None:
    # pre-commit splits the files among its processes unless the hook is serial; the
    # double shift needs pkg/data.py and pkg/train.py in one run (issue 19: with
    # `require_serial: false` it was missed for some of these counts and not others;
    # which ones depends on the number of processors).
    _cross_file_project(tmp_path, others)
    rev = git(hook_repo, "rev-parse", "HEAD").strip()
    (tmp_path / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {hook_repo}\n    rev: {rev}\n    hooks:\n      - id: trainaudit\n")
    env = {**_env(pre_commit_home)}
    result = subprocess.run([sys.executable, "-m", "pre_commit", "run", "trainaudit",
                             "--all-files", "--verbose"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count(DOUBLE_SHIFT) == 1, result.stdout


def test_a_commit_that_touches_only_the_trainer_sees_the_double_shift(
        tmp_path: Path, hook_repo: Path, pre_commit_home: Path) -> None:
    _cross_file_project(tmp_path, 3)
    result = run_hook(tmp_path, hook_repo, pre_commit_home, "trainaudit", "pkg/train.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert DOUBLE_SHIFT in result.stdout
    unrelated = run_hook(tmp_path, hook_repo, pre_commit_home, "trainaudit", "pkg/util_00.py")
    assert unrelated.returncode == 0, unrelated.stdout  # the finding involves neither file


def test_hooks_honour_exclude_for_the_files_they_are_given(
        project: Path, hook_repo: Path, pre_commit_home: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.trainaudit]\nexclude = ["buggy.py"]\n')
    git(project, "add", "-A")
    check = run_hook(project, hook_repo, pre_commit_home, "trainaudit", "buggy.py", "clean.py")
    assert check.returncode == 0, check.stdout + check.stderr
    fixed = run_hook(project, hook_repo, pre_commit_home, "trainaudit-fix", "buggy.py")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert (project / "buggy.py").read_text() == BUGGY


def test_documented_setup_works_against_a_local_clone(
        project: Path, hook_repo: Path, pre_commit_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # docs/ci.md's config as written, with its placeholder path pointing at a clone
    # (issue 19: `rev: v0.2.0` named a tag that does not exist, and pre-commit exited 3).
    clone = tmp_path_factory.mktemp("clone") / "trainaudit"
    git(hook_repo.parent, "clone", "-q", str(hook_repo), str(clone))
    docs = (REPO / "docs/ci.md").read_text(encoding="utf-8")
    block = docs.split("```yaml\n# .pre-commit-config.yaml\n", 1)[1].split("```", 1)[0]
    assert "/path/to/trainaudit" in block
    (project / ".pre-commit-config.yaml").write_text(block.replace("/path/to/trainaudit", str(clone)))
    git(project, "add", "-A")
    env = _env(pre_commit_home)
    update = subprocess.run([sys.executable, "-m", "pre_commit", "autoupdate", "--freeze"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert update.returncode == 0, update.stdout + update.stderr
    head = git(clone, "rev-parse", "HEAD").strip()
    assert f"rev: {head}" in (project / ".pre-commit-config.yaml").read_text()
    git(project, "add", "-A")
    run = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--files", "buggy.py",
                          "clean.py"], cwd=project, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "files were modified by this hook" in run.stdout  # trainaudit-fix fixed the roll
    assert "torch.roll" not in (project / "buggy.py").read_text()
