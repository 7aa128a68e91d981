"""Which rules report in test files, and the ``check-tests`` key that turns them all on."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers import check_tree, found, write_tree
from trainaudit.config import ConfigError, is_test_path, load_config
from trainaudit.registry import applies_to_tests, load_rules

STEP_WITHOUT_ZERO_GRAD = textwrap.dedent("""\
    import torch


    def test_parity(model, batches):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for x in batches:
            model(x).sum().backward()
            optimizer.step()
""")

DOUBLE_SHIFT = textwrap.dedent("""\
    import torch.nn.functional as F


    def test_loss(model, tokens):
        labels = tokens[:, 1:]
        logits = model(tokens[:, :-1])
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
""")


@pytest.mark.parametrize(("path", "expected"), [
    ("tests/test_train.py", True), ("tests/helpers.py", True), ("pkg/test/util.py", True),
    ("test_train.py", True), ("train_test.py", True), ("conftest.py", True),
    ("sub/conftest.py", True), ("train.py", False), ("latest/train.py", False),
    ("contest.py", False), ("testing.py", False), ("attest_x.py", False),
])
def test_test_paths(path: str, expected: bool) -> None:
    assert is_test_path(path) is expected


def test_families_declare_their_policy() -> None:
    rules = load_rules()
    reporting = sorted(code for code, cls in rules.items() if cls.applies_to_tests)
    assert reporting == ["TA001", "TA101", "TA102", "TA103", "TA104", "TA105"]
    assert applies_to_tests("TA999")  # no rule class: the engine's own findings are kept


def test_loop_rules_quiet_in_tests_by_default(tmp_path: Path) -> None:
    write_tree(tmp_path, {"tests/test_parity.py": STEP_WITHOUT_ZERO_GRAD,
                          "train_test.py": STEP_WITHOUT_ZERO_GRAD,
                          "train.py": STEP_WITHOUT_ZERO_GRAD})
    assert found(check_tree(tmp_path, select=("TA204",))) == {("train.py", 8, 9, "TA204")}


def test_check_tests_turns_them_on(tmp_path: Path) -> None:
    write_tree(tmp_path, {"tests/test_parity.py": STEP_WITHOUT_ZERO_GRAD})
    result = check_tree(tmp_path, select=("TA204",), check_tests=True)
    assert found(result) == {("tests/test_parity.py", 8, 9, "TA204")}


def test_label_rules_still_report_in_tests(tmp_path: Path) -> None:
    write_tree(tmp_path, {"tests/test_loss.py": DOUBLE_SHIFT})
    assert {code for *_, code in found(check_tree(tmp_path, select=("TA1",)))} == {"TA102"}


def test_config_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.trainaudit]\ncheck-tests = true\n")
    assert load_config(None, start=tmp_path, rule_options={}).check_tests is True
    (tmp_path / "pyproject.toml").write_text("[tool.trainaudit]\ncheck-tests = 1\n")
    with pytest.raises(ConfigError, match="check-tests"):
        load_config(None, start=tmp_path, rule_options={})
