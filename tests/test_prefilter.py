"""The text prefilter never hides a finding.

The prefilter skips, unparsed, every file that contains none of the selected rules'
trigger strings, and skips each rule on files without its own triggers. The property:
on every fixture and on a generated corpus of training scripts, the findings with the
prefilter are exactly the findings without it. One documented exception: TA001
(syntax error) is by design reported only in files some rule would read, so a syntax
error in a file without any trigger is excluded from the comparison.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.corpus import corpus
from tests.helpers import chdir, config, write_tree
from trainaudit.discover import discover
from trainaudit.engine import Analyzer, CheckResult, check_files, settings_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

Key = tuple[str, int, int, str, str]


def _check(root: Path, prefilter: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[CheckResult, Analyzer]:
    if prefilter:
        monkeypatch.delenv("TRAINAUDIT_NO_PREFILTER", raising=False)
    else:
        monkeypatch.setenv("TRAINAUDIT_NO_PREFILTER", "1")
    with chdir(root):
        cfg = config()
        files, problems = discover([Path(".")], cfg)
        assert not problems
        result = check_files(files, cfg, jobs=1)
        assert not result.errors, result.errors
        return result, Analyzer(settings_for(cfg))


def _keys(result: CheckResult) -> set[Key]:
    return {(f.path, f.line, f.column, f.code, f.message) for f in result.findings}


def assert_prefilter_hides_nothing(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Compare both runs on a tree; returns files checked (with, without) the prefilter."""
    filtered, analyzer = _check(root, True, monkeypatch)
    full, _ = _check(root, False, monkeypatch)
    assert analyzer.prefilter  # the first run really had it on

    def read_by_some_rule(path: str) -> bool:
        return analyzer.wants((root / path).read_text(encoding="utf-8", errors="replace"))

    expected = {k for k in _keys(full) if k[3] != "TA001" or read_by_some_rule(k[0])}
    assert _keys(filtered) == expected
    return filtered.files_checked, full.files_checked


def _fixture_trees() -> list[Path]:
    return sorted(p for p in FIXTURES.iterdir() if p.is_dir())


@pytest.mark.parametrize("family", _fixture_trees(), ids=lambda p: p.name)
def test_fixtures(family: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each family folder as one tree: single-file cases and multi-file cases together,
    # which also lets cross-file rules see more than one case at a time.
    shutil.copytree(family, tmp_path / family.name,
                    ignore=shutil.ignore_patterns("*.expected", "expected.txt", "*.out.py"))
    assert_prefilter_hides_nothing(tmp_path / family.name, monkeypatch)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_generated_corpus(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path, corpus(seed, 40))
    with_prefilter, without = assert_prefilter_hides_nothing(tmp_path, monkeypatch)
    assert with_prefilter < without  # the prefilter did skip files: the test is not vacuous


def test_corpus_is_varied() -> None:
    """The generator produces buggy scripts of several families and clean files."""
    import tempfile

    from tests.helpers import check_tree

    with tempfile.TemporaryDirectory() as folder:
        write_tree(Path(folder), corpus(0, 40))
        codes = {f.code for f in check_tree(Path(folder)).findings}
    assert {"TA001", "TA101"} <= codes
    assert any(c.startswith("TA2") for c in codes)
    assert any(c.startswith("TA3") for c in codes)
    assert any(c.startswith("TA5") for c in codes)


def _readers(source: str) -> frozenset[str]:
    analyzer = Analyzer(settings_for(config()))
    found = analyzer.readers(source.encode())
    assert found is not None
    return found


@pytest.mark.parametrize("source", [
    # An autograd Function defines backward; nothing here trains.
    "import torch\n\nclass Square(torch.autograd.Function):\n"
    "    @staticmethod\n    def backward(ctx, grad):\n        return 2 * grad\n",
    "# not backward compatible with Python 3.8\nimport torch\n",
    "def _backward(self, grad):\n    return grad\n",
])
def test_the_word_backward_is_not_a_training_loop(source: str) -> None:
    readers = _readers(source)
    assert not readers & {"loops", "precision", "TA503"}


@pytest.mark.parametrize("source, reader", [
    ("for x in data:\n    loss = model(x)\n    loss.backward()\n", "loops"),
    ("for x in data:\n    accelerator.backward (model(x))\n", "loops"),
    ("for b in data:\n    self.manual_backward(self(b))\n", "loops"),
    ("for b in data:\n    opt.step()\n", "loops"),
    # A loop that trains through an imported helper, however the import is spelled.
    ("from .engine import (\n    evaluate,\n    train_one_epoch,\n)\nfor e in range(3):\n"
     "    train_one_epoch(model, loader, optimizer)\n", "loops"),
    ("from utils import fit\nfor e in range(3):\n    fit(model, optimizer)\n", "loops"),
    ("for x in data:\n    loss.backward()\n", "precision"),
    ("model = model.to(device, dtype=torch.bfloat16)\nopt = optim.AdamW(model.parameters())\n", "precision"),
    ("model = GPT(cfg).half()\n", "precision"),
    ("accelerator = Accelerator(mixed_precision='bf16')\n", "precision"),
    ("class M(nn.Module):\n    def __init__(self):\n        self.blocks = nn.ModuleList(b)\n\n"
     "    def forward(self, x):\n        return x\n", "checkpointing"),
    ("model.gradient_checkpointing_enable()\n", "checkpointing"),
    ("parser.add_argument('--seq-len', default=8192)\n", "checkpointing"),
])
def test_what_each_family_reads(source: str, reader: str) -> None:
    assert reader in _readers(source)
