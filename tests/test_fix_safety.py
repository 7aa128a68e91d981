"""Fixes never break working code, executed: every codemod fixture pair whose code runs on a
CPU is run before and after its fix (a few optimizer steps on a tiny model); both must run,
and where the fix is safe (the pair's first line is ``# fix: safe-only``) the observable
results are equal: the parameters the run leaves, what it returns and the numbers it prints.

Each pair has an entry in ``RUNS`` (how to call it) or in ``CANNOT_RUN`` (why not); a new
pair without either fails ``test_every_pair_is_accounted_for``.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import check_tree, fix_tree
from trainaudit.diagnostics import Severity

torch = pytest.importorskip("torch")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

_CLASSIFIER_STEP = "m = classifier(); o = torch.optim.SGD(m.parameters(), lr=0.1); {call}; observed = m"
_TAGGER_STEP = ("m = TinyTagger(); o = torch.optim.SGD(m.parameters(), lr=0.1); "
                "ids = torch.randint(0, 16, (2, 6)); {call}; observed = m")

_BINARY_STEP = ("m = torch.nn.Linear(4, 1); o = torch.optim.SGD(m.parameters(), lr=0.1); "
                "batches = [(torch.randn(4, 4), torch.rand(4, 1)) for _ in range(3)]; "
                "observed = (train(m, batches, o), m)")

# How to run one pair: statements executed after the fixture's module code, in its namespace
# with the helpers below; they leave what to compare in ``observed``.
RUNS: dict[str, str] = {
    "loops/ta201_inline_enumerate": "m = classifier(); train(m, dataset(), epochs=1); observed = m",
    "loops/ta201_module_script": "observed = model",
    "loops/ta201_seed_train_step": ("m = TinyTagger(); main(m, token_dataset(), token_dataset(8)); "
                                    "observed = m"),
    "loops/ta201_trainer_method": ("m = classifier(); t = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1)); "
                                   "t.fit(dataset()); observed = m"),
    "loops/ta201_while_max_iters": ("max_iters = 3; block_size = 8; m = TinyLM(); "
                                    "train(m, torch.randint(0, 16, (64,))); observed = m"),
    "loops/ta201_ddp_helper": "m = classifier(); main(m, dataset()); observed = m",
    "loops/ta201_for_range_max_iters": ("max_iters = 3; block_size = 8; m = TinyLM(); "
                                        "train(m, torch.randint(0, 16, (64,))); observed = m"),
    "loops/ta202_divide_loss": "m = classifier(); train(m, dataset(), grad_accum=2); observed = m",
    "loops/ta202_counter_gate": "m = classifier(); train(m, dataset(), grad_accum=2); observed = m",
    "loops/ta203_move_under_gate": "m = classifier(); train(m, dataset(), accumulation_steps=2); observed = m",
    "loops/ta203_zero_grad_out_of_else": (
        "m = classifier(); train(m, loader(), torch.optim.SGD(m.parameters(), lr=0.1)); observed = m"),
    "loops/ta204_add_zero_grad": "m = classifier(); train(m, dataset()); observed = m",
    "loops/ta204_unnamed_step_run": "m = classifier(); train(m, dataset()); observed = m",
    "loops/ta204_zero_grad_on_step_branch": (
        "m = classifier(); train(m, loader(), torch.optim.SGD(m.parameters(), lr=0.1)); observed = m"),
    "loops/ta204_zero_grad_out_of_log_block": (
        "m = classifier(); train(m, loader(), torch.optim.SGD(m.parameters(), lr=0.1), log_every=2); "
        "observed = m"),
    "loops/ta206_move_zero_grad": "m = classifier(); train(m, dataset()); observed = m",
    "loops/ta501_add_no_grad": "m = classifier(); observed = (evaluate(m, loader()), m)",
    "loops/ta501_training_function_not_decorated": (
        "s, t = classifier(), classifier(); loss = distillation_loss(s, t, torch.randn(4, 4)); "
        "loss.backward(); observed = (loss, [p.grad for p in s.parameters()])"),
    "loops/ta502_epoch_loop_evaluate": ("m = classifier(); train(m, loader(), loader(), "
                                        "torch.optim.SGD(m.parameters(), lr=0.1), epochs=2); "
                                        "observed = (m, m.training)"),
    "loops/ta502_inline_eval": ("m = classifier(); x, y = next(iter(loader())); train(m, loader(), (x, y)); "
                                "observed = (m, m.training)"),
    "loops/ta502_restore_train_mode": "m = classifier(); train(m, loader(), loader()); observed = (m, m.training)",
    "loops/ta502_student_not_teacher": (
        "s, t = classifier(), classifier(); distill(s, t, loader(), torch.optim.SGD(s.parameters(), lr=0.1), "
        "probe_every=2); observed = (s, s.training)"),
    "loops/ta503_item_and_detach": "m = classifier(); train(m, loader(), epochs=1); observed = m",
    "loops/ta504_add_clip": "m = classifier(); train(m, dataset()); observed = m",
    "loops/ta203_guarded_scheduler": (
        "m = classifier(); o = torch.optim.SGD(m.parameters(), lr=0.1); "
        "s = torch.optim.lr_scheduler.StepLR(o, step_size=1); steps = train(m, loader(), o, s); "
        "observed = (m, steps, s.last_epoch)"),
    "loops/ta203_scheduler_loop": (
        "m = classifier(); o = torch.optim.SGD(m.parameters(), lr=0.1); t = Trainer(m, o, accum=2); "
        "t.train_epoch(loader()); observed = (m, [s.last_epoch for s in t.lr_schedulers])"),
    "precision/autocast_inline_loss": _BINARY_STEP,
    "precision/autocast_helper_forward": _BINARY_STEP,
    "labels/ta103_collate_key": ("observed = collate_fn([{'input_ids': torch.arange(6) + i} for i in range(3)])"),
    "labels/ta103_dataset_roll": ("d = TokenDataset(torch.arange(24), 6); "
                                  "observed = [d[i] for i in range(len(d))]"),
    "labels/ta101_numpy_roll": "observed = make_example(list(range(8)))",
    "labels/ta101_roll_batch": _TAGGER_STEP.format(call="train_step(m, ids, o)"),
    "labels/ta102_trainer_class_roll": ("d = Windows(torch.arange(64), 8); "
                                        "observed = [d[i] for i in range(len(d))]"),
    "labels/ta102_pad": ("m = TinyTagger(); d = PaddedShift(torch.randint(0, 16, (4, 6))); "
                         "batch = torch.utils.data.default_collate([d[i] for i in range(len(d))]); "
                         "observed = loss_fn(m, batch)"),
    "labels/ta102_same_file_roll": ("m = TinyTagger(); o = torch.optim.SGD(m.parameters(), lr=0.1); "
                                    "d = TextDataset(torch.randint(0, 16, (24,)), 6); "
                                    "train_step(m, torch.utils.data.default_collate([d[i] for i in range(len(d))]), o); "
                                    "observed = m"),
    "labels/ta104_minus_one": "m = TinyTagger(); observed = loss_fn(m, torch.randint(0, 16, (2, 6)))",
    "labels/ta105_copy_dataset": ("m = TinyTagger(); o = torch.optim.SGD(m.parameters(), lr=0.1); "
                                  "d = CopyDataset(torch.randint(0, 16, (4, 6)).tolist()); "
                                  "train_step(m, torch.utils.data.default_collate([d[i] for i in range(len(d))]), o); "
                                  "observed = m"),
    "labels/ta105_same_input": _TAGGER_STEP.format(call="train_step(m, ids, o)"),
    "precision/clip_before_unscale": _CLASSIFIER_STEP.format(call="train(m, loader(), o)"),
    "precision/fp16_no_scaler": _CLASSIFIER_STEP.format(call="train(m, loader(), o, device_type='cpu')"),
    "precision/fp32_device_type": "observed = model",
    "precision/fp32_helper": ("m = TinyTagger(); o = torch.optim.SGD(m.parameters(), lr=0.1); "
                              "train(m, torch.utils.data.DataLoader(token_dataset(), batch_size=4), o, "
                              "torch.optim.lr_scheduler.LinearLR(o), 'cpu'); observed = m"),
    "precision/scaler_bypassed": _CLASSIFIER_STEP.format(call="train(m, loader(), o)"),
    "precision/bf16_scaler": ("m = classifier(); o = torch.optim.SGD(m.parameters(), lr=0.1); "
                              "train(m, loader(), o); observed = m"),
    "precision/bf16_scaler_kept": ("m = classifier(); t = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1)); "
                                   "[t.step(x, y) for x, y in loader()]; observed = m"),
    "precision/custom_fwd": ("x = torch.randn(5, requires_grad=True); y = Square.apply(Cast.apply(x)).sum(); "
                             "y.backward(); observed = (y, x.grad)"),
    "precision/deprecated_aliases": ("m = classifier(); o = torch.optim.SGD(m.parameters(), lr=0.1); "
                                     "train(m, loader(), o); observed = m"),
}

CANNOT_RUN: dict[str, str] = {
    "labels/ta102_hf_preshifted": "downloads a Hugging Face model (`from_pretrained(\"gpt2\")`)",
    "labels/ta102_hf_slice_assign": "downloads a Hugging Face model (`from_pretrained(\"tiny-gpt\")`)",
    "loops/ta202_micro_step": "a nanoGPT-shaped module script on `torch.nn.Module()`, which has no forward",
    "loops/ta205_gated_no_sync": "DistributedDataParallel on CUDA devices (`model.cuda()`, NCCL)",
    "loops/ta205_micro_loop_no_sync": "DistributedDataParallel needs an initialised process group",
    "loops/ta205_other_model_no_sync": "DistributedDataParallel needs an initialised process group",
    "loops/ta503_all_reduce_detach": "`dist.all_reduce` needs an initialised process group",
    "loops/ta504_scaler_clip": "moves its batches to CUDA (`x.cuda()`)",
    "loops/ta504_unnamed_scaler_clip": "moves its batches to CUDA (`x.cuda()`)",
    "loops/ta504_scaler_on_self": "moves its batches to CUDA (`x.cuda()`)",
    "precision/scaler_parameter": "float16 autocast with a CUDA GradScaler (`GradScaler(\"cuda\")`)",
    "precision/version_guard_kept": "a CUDA GradScaler at import time",
}
# Corrective pairs whose input is the bug and crashes with it; only the fixed code must run.
BROKEN_BEFORE: dict[str, str] = {
    "labels/ta104_minus_one": "the -1 mask reaches cross_entropy, which ignores -100: an index error",
}
# Families whose pairs are code fragments (a model class to checkpoint, a data set to
# re-shift), not steps: the rule fixtures of their own tests check their output.
FRAGMENT_FAMILIES = {
    "checkpointing": "model definitions to checkpoint, no training step (see test_checkpointing)",
}


def _pairs() -> list[Path]:
    return sorted(FIXTURES.glob("*/codemods/*.in.py"))


def _key(pair: Path) -> str:
    return f"{pair.parent.parent.name}/{pair.name.removesuffix('.in.py')}"


def _family_select(pair: Path) -> dict[str, object]:
    """The selection the pair's fix is made with: its family's ``SELECT`` file."""
    select = pair.parent.parent / "SELECT"
    return {"select": tuple(select.read_text().split())} if select.exists() else {}


def _cannot_run(key: str) -> str | None:
    family = key.split("/", 1)[0]
    return CANNOT_RUN.get(key) or (FRAGMENT_FAMILIES.get(family) if key not in RUNS else None)


def test_every_pair_is_accounted_for() -> None:
    keys = {_key(p) for p in _pairs()}
    unaccounted = sorted(k for k in keys if k not in RUNS and _cannot_run(k) is None)
    assert unaccounted == []
    assert not (set(RUNS) | set(CANNOT_RUN)) - keys  # no stale entries


# -- the tiny world the fixtures run in ------------------------------------------------------


class TinyLM(torch.nn.Module):
    """``model(x, y) -> (logits, loss)`` over a 16-token vocabulary (nanoGPT's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, x: Any, y: Any = None) -> Any:
        logits = self.head(self.embed(x))
        loss = None if y is None else torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y.flatten())
        return logits, loss


class TinyTagger(torch.nn.Module):
    """``model(input_ids) -> logits`` per token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, input_ids: Any) -> Any:
        return self.head(self.embed(input_ids))


def _helpers() -> dict[str, Any]:
    def classifier() -> Any:
        return torch.nn.Linear(4, 2)

    def dataset(n: int = 16) -> Any:
        return torch.utils.data.TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,)))

    def loader(n: int = 16) -> Any:
        return torch.utils.data.DataLoader(dataset(n), batch_size=4)

    def token_dataset(n: int = 16) -> list[dict[str, Any]]:
        ids = torch.randint(0, 16, (n, 6))
        return [{"input_ids": row, "labels": row} for row in ids]

    return {"torch": torch, "classifier": classifier, "dataset": dataset, "loader": loader,
            "token_dataset": token_dataset, "TinyLM": TinyLM, "TinyTagger": TinyTagger}


@dataclass
class Observed:
    tensors: list[Any]
    numbers: list[float]  # printed numbers and Python scalars


def _flatten(value: Any, tensors: list[Any], numbers: list[float]) -> None:
    if isinstance(value, torch.nn.Module):
        tensors.extend(p.detach().clone() for p in value.parameters())
    elif isinstance(value, torch.Tensor):
        tensors.append(value.detach().clone())
    elif isinstance(value, bool | int | float):
        numbers.append(float(value))
    elif isinstance(value, dict):
        for key in sorted(value):
            _flatten(value[key], tensors, numbers)
    elif isinstance(value, list | tuple):
        for item in value:
            _flatten(item, tensors, numbers)


_NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?|-?\d+")


def run(source: str, call: str) -> Observed:
    """Run the fixture's module code, then ``call``; seeded, stdout captured, argv empty."""
    torch.manual_seed(0)
    namespace: dict[str, Any] = {"__name__": "fixture", **_helpers()}
    out = io.StringIO()
    argv = sys.argv
    sys.argv = ["fixture.py"]
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(source, "fixture.py", "exec"), namespace)
            exec(compile(call, "call.py", "exec"), namespace)
    finally:
        sys.argv = argv
    tensors: list[Any] = []
    numbers: list[float] = []
    _flatten(namespace.get("observed"), tensors, numbers)
    # Printed numbers: a 0-d tensor prints 4 decimals, a float all of them; compare values.
    numbers.extend(float(n) for n in _NUMBER.findall(re.sub(r"grad_fn=<\w+>", "", out.getvalue())))
    return Observed(tensors, numbers)


@pytest.mark.parametrize("pair", [p for p in _pairs() if _key(p) in RUNS], ids=_key)
def test_fixed_code_runs_and_safe_fixes_keep_results(pair: Path) -> None:
    source = pair.read_text()
    fixed = pair.with_name(pair.name.replace(".in.py", ".out.py")).read_text()
    call = RUNS[_key(pair)]
    after = run(fixed, call)
    if _key(pair) in BROKEN_BEFORE:
        with pytest.raises(IndexError):  # the bug's own crash
            run(source, call)
        return
    before = run(source, call)
    assert before.tensors or before.numbers, "the run observed nothing"
    for observed in (before, after):
        assert all(torch.isfinite(t.float()).all() for t in observed.tensors if t.is_floating_point())
    if not source.startswith("# fix: safe-only"):
        return  # corrective / feature fixes change results on purpose; they must still run
    assert len(before.tensors) == len(after.tensors)
    for a, b in zip(before.tensors, after.tensors, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)
    assert len(before.numbers) == len(after.numbers)
    for a, b in zip(before.numbers, after.numbers, strict=True):
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4)


# -- self-consistency: a fix leaves nothing new behind ---------------------------------------


def _severe(findings: list[Any]) -> Counter[str]:
    return Counter(f.code for f in findings if f.severity in (Severity.ERROR, Severity.WARNING))


@pytest.mark.parametrize("pair", _pairs(), ids=_key)
def test_fix_removes_its_findings_and_adds_no_warning_or_error(pair: Path, tmp_path: Path) -> None:
    """``fix --apply --unsafe-fixes`` on a copy: re-checked with every rule, the findings it
    fixed are gone and no finding at warning or error appears that was not there before
    (a fixer that writes another rule's bug fails here)."""
    source = pair.read_text()
    (tmp_path / "train.py").write_text(source)
    select = _family_select(pair)
    fixed_codes = {f.code for f in check_tree(tmp_path, **select).findings if f.fix is not None}
    before = check_tree(tmp_path, select=("ALL",)).findings
    out = fix_tree(tmp_path, unsafe_fixes=True, **select)
    if pair.with_name(pair.name.replace(".in.py", ".out.py")).read_text() == source:
        assert out == {}  # a pair that shows a fix is *not* made
        return
    (tmp_path / "train.py").write_text(out["train.py"])
    after = check_tree(tmp_path, select=("ALL",)).findings
    assert [f for f in check_tree(tmp_path, **select).findings if f.code in fixed_codes
            and f.fix is not None] == []
    assert _severe(after) - _severe(before) == Counter()
