"""The training-loop model (trainaudit.model.loops) and the TA2xx/TA5xx rules on the
reference trainer."""

from __future__ import annotations

import ast
import pickle
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.helpers import check_tree, fix_tree, found, only_training_loop
from trainaudit.model.loops import (
    BatchSize,
    TrainingLoop,
    find_training_loops,
    looks_like_accumulation_test,
    summarize_loops,
)
from trainaudit.model.module import ModuleFacts

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "reference_impl"


def loops_of(source: str) -> list[TrainingLoop]:
    text = textwrap.dedent(source)
    return find_training_loops(ModuleFacts("train.py", "train", text, ast.parse(text)))


def only_loop(source: str) -> TrainingLoop:
    loops = loops_of(source)
    assert len(loops) == 1, loops
    return loops[0]


def kinds(loop: TrainingLoop) -> list[str]:
    return [op.kind for op in loop.operations]


# -- which loop trains ---------------------------------------------------------------------


def test_epoch_loop_is_outer_and_batch_loop_trains() -> None:
    loop = only_loop("""
        import torch
        def train(model, loader, optimizer, epochs=3):
            for epoch in range(epochs):
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
    """)
    assert loop.header.text == "for x, y in loader:"
    assert loop.header.function == "train"
    assert [o.text for o in loop.outer_loops] == ["for epoch in range(epochs):"]
    assert kinds(loop) == ["zero_grad", "forward", "backward", "optimizer_step"]
    assert loop.accumulation is None


def test_helper_in_the_same_file_is_followed() -> None:
    loop = only_loop("""
        def train_step(model, batch, optimizer, scheduler):
            optimizer.zero_grad()
            loss = model(batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()

        def main(model, loader, optimizer, scheduler):
            for batch in loader:
                train_step(model, batch, optimizer, scheduler)
    """)
    assert loop.helpers == ("train_step",)
    step = loop.first("optimizer_step")
    assert step is not None and step.site.function == "train_step"
    assert [v.text for v in step.via] == ["train_step(model, batch, optimizer, scheduler)"]
    assert kinds(loop) == ["zero_grad", "forward", "backward", "optimizer_step", "scheduler_step"]


def test_a_training_loop_inside_a_helper_is_not_reported_twice() -> None:
    loops = loops_of("""
        def train_epoch(model, loader, optimizer):
            for x, y in loader:
                model(x, y).loss.backward()
                optimizer.step()
                optimizer.zero_grad()

        def main(model, loader, optimizer):
            for epoch in range(10):
                train_epoch(model, loader, optimizer)
    """)
    assert [loop.header.function for loop in loops] == ["train_epoch"]


def test_rl_env_step_is_not_an_optimizer_step() -> None:
    assert loops_of("""
        for _ in range(100):
            obs, reward, done, info = env.step(policy(obs))
            loss.backward()
    """) == []


# -- accumulation ----------------------------------------------------------------------------


def test_gated_step_is_accumulation_with_its_steps() -> None:
    loop = only_loop("""
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y) / accum
            loss.backward()
            if (i + 1) % accum == 0:
                optimizer.step()
                optimizer.zero_grad()
    """)
    accumulation = loop.accumulation
    assert accumulation is not None and accumulation.kind == "gated"
    assert accumulation.steps == "accum"
    assert accumulation.gate is not None and accumulation.gate.text == "(i + 1) % accum == 0"


def test_continue_before_the_step_gates_it() -> None:
    loop = only_loop("""
        for i, batch in enumerate(loader):
            (model(batch).loss / k).backward()
            if (i + 1) % k != 0:
                continue
            optimizer.step()
            optimizer.zero_grad()
    """)
    step = loop.first("optimizer_step")
    assert step is not None and [(g.text, g.negated) for g in step.guards] == [("(i + 1) % k != 0", True)]
    assert loop.accumulation is not None and loop.accumulation.kind == "gated"


def test_micro_step_loop_is_accumulation() -> None:
    loop = only_loop("""
        while True:
            for micro_step in range(gradient_accumulation_steps):
                logits, loss = model(X, Y)
                loss = loss / gradient_accumulation_steps
                scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    """)
    accumulation = loop.accumulation
    assert accumulation is not None and accumulation.kind == "micro-loop"
    assert accumulation.steps == "gradient_accumulation_steps"
    assert loop.losses[0].scaled is True


def test_accelerate_accumulate_is_delegated() -> None:
    loop = only_loop("""
        from accelerate import Accelerator
        accelerator = Accelerator(gradient_accumulation_steps=8)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
    """)
    assert loop.accumulation is not None and loop.accumulation.kind == "delegated"
    assert "accelerate" in loop.delegation


@pytest.mark.parametrize(("test", "expected"), [
    ("(step + 1) % accumulation_steps == 0", True),
    ("accelerator.sync_gradients", True),
    ("is_last_micro_step", True),
    ("scaler is not None", False),
    ("step > warmup", False),
])
def test_accumulation_tests(test: str, expected: bool) -> None:
    assert looks_like_accumulation_test(ast.parse(test, mode="eval").body) is expected


# -- losses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "scaled"), [
    ("loss = F.cross_entropy(model(x), y)\nloss.backward()", False),
    ("loss = F.cross_entropy(model(x), y)\n(loss / k).backward()", True),
    ("loss = F.cross_entropy(model(x), y)\nloss /= k\nloss.backward()", True),
    ("loss = model(x, y).loss\nloss.backward()", False),
    ("loss = self.loss_fn(model(x), y)\nloss.backward()", None),
])
def test_loss_scaling(body: str, scaled: bool | None) -> None:
    lines = textwrap.indent(body, "        ")
    loop = only_loop(f"""
import torch.nn.functional as F
def train(self, model, loader, optimizer, k=4):
    for x, y in loader:
{lines}
        optimizer.step()
        optimizer.zero_grad()
""")
    assert loop.losses[0].scaled is scaled


# -- batch size -----------------------------------------------------------------------------

_LOOP = """
    for x, y in loader:
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
"""


@pytest.mark.parametrize(("setup", "expected"), [
    ("loader = DataLoader(ds, batch_size=8)", BatchSize(8, "literal", "8")),
    ("loader = DataLoader(ds, 16, shuffle=True)", BatchSize(16, "literal", "16")),
    ("parser.add_argument('--batch-size', type=int, default=4)\n"
     "loader = DataLoader(ds, batch_size=args.batch_size)",
     BatchSize(4, "argparse --batch-size default", "args.batch_size")),
    ("cfg = {'batch_size': 2}\nloader = DataLoader(ds, batch_size=cfg['batch_size'])",
     BatchSize(2, "config 'batch_size'", "cfg['batch_size']")),
    ("bs = 6\nloader = DataLoader(ds, batch_size=bs * 2)", BatchSize(12, "bs = 6 and literal", "bs * 2")),
    ("loader = DataLoader(ds, batch_size=args.batch_size)", None),
])
def test_batch_size_sources(setup: str, expected: BatchSize | None) -> None:
    source = "from torch.utils.data import DataLoader\n" + setup + textwrap.dedent(_LOOP)
    assert only_loop(source).batch_size == expected


def test_batch_size_from_a_dataclass_default_and_a_parameter_default() -> None:
    loop = only_loop("""
        from dataclasses import dataclass
        from torch.utils.data import DataLoader

        @dataclass
        class Config:
            batch_size: int = 16

        def train(model, ds, optimizer, config: Config):
            loader = DataLoader(ds, batch_size=config.batch_size)
            for x in loader:
                model(x).sum().backward()
                optimizer.step()
    """)
    assert loop.batch_size == BatchSize(16, "config field batch_size", "config.batch_size")
    loop = only_loop("""
        from torch.utils.data import DataLoader
        def train(model, ds, optimizer, batch_size=4):
            for x in DataLoader(ds, batch_size=batch_size):
                model(x).sum().backward()
                optimizer.step()
    """)
    assert loop.batch_size == BatchSize(4, "parameter batch_size default", "batch_size")


# -- contexts and summaries -----------------------------------------------------------------


def test_contexts_resolve_a_bound_autocast_and_decorators() -> None:
    loop = only_loop("""
        import torch
        from contextlib import nullcontext
        ctx = nullcontext() if device == "cpu" else torch.autocast("cuda", dtype=torch.bfloat16)

        @torch.no_grad()
        def evaluate(model):
            model.eval()
            model(X)
            model.train()

        for it in range(100):
            with ctx:
                logits, loss = model(X, Y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if it % 10 == 0:
                evaluate(model)
    """)
    forward = loop.forwards[0]
    assert forward.contexts == ("contextlib.nullcontext|torch.autocast",)
    assert forward.under("torch.autocast")
    evaluation = [op for op in loop.ops("forward") if op.site.function == "evaluate"]
    assert evaluation and evaluation[0].under("no_grad")


def test_summary_is_picklable_and_has_no_nodes() -> None:
    text = (ROOT / "fixtures/loops/seed_train_step.py").read_text()
    facts = summarize_loops(ModuleFacts("seed.py", "seed", text, ast.parse(text)))
    restored = pickle.loads(pickle.dumps(facts))
    assert len(restored.training_loops) == 1
    assert all(op.node is None for op in restored.training_loops[0].operations)
    assert "train_step" in restored.functions


def test_imported_helper_is_inlined_across_files(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "fixtures/loops/cross_file_train_step", tmp_path / "case",
                    ignore=shutil.ignore_patterns("expected.txt"))
    result = check_tree(tmp_path / "case", select=("TA2", "TA5"))
    assert found(result) == {("train.py", 16, 5, "TA201")}
    finding = result.findings[0]
    assert finding.related[0].path == "trainer/steps.py"
    assert finding.fix is None  # the step is in another file: no automatic fix


def test_min_effective_batch_option(tmp_path: Path) -> None:
    shutil.copy(ROOT / "fixtures/loops/plain_no_accumulation.py", tmp_path / "train.py")
    options = {"min-effective-batch": 8}
    from trainaudit.registry import all_options

    assert found(check_tree(tmp_path, select=("TA201",), options={**all_options(), **options})) == set()
    assert found(check_tree(tmp_path, select=("TA201",))) == {("train.py", 12, 5, "TA201")}


# -- the reference trainer ------------------------------------------------------------------

TRAINER = "reference_impl/mm_rec/scripts/train_base_model.py"


@pytest.mark.skipif(not (ROOT / TRAINER).exists(), reason="reference trainer not written yet")
def test_reference_trainer_has_ta201_only_and_fixes_clean(tmp_path: Path) -> None:
    shutil.copytree(REFERENCE, tmp_path / "reference_impl",
                    ignore=shutil.ignore_patterns("runs", "__pycache__", "*.pt"))
    result = check_tree(tmp_path, select=("TA2", "TA5"))
    assert [(f.path, f.code) for f in result.findings] == [(TRAINER, "TA201")]
    assert "4 samples" in result.findings[0].message

    fixed = fix_tree(tmp_path, select=("TA2",))[TRAINER]
    assert '"--accumulation-steps",\n        type=int,\n        default=8,' in fixed
    assert "(loss / accumulation_steps).backward()" in fixed
    assert "for window in accumulation_windows(train_loader, args.accumulation_steps):" in fixed
    assert "if sync_gradients:" in fixed
    (tmp_path / TRAINER).write_text(fixed)
    assert check_tree(tmp_path, select=("TA2",)).findings == []
    # Idempotent.
    assert fix_tree(tmp_path, select=("TA2",)) == {}


_COUNTER_GATE = """\
import torch.nn.functional as F


def train(model, loader, optimizer, accum):
    micro = 0
    for x, y in loader:
        F.cross_entropy(model(x), y).backward()
        micro += 1
        if micro {test} accum:
            optimizer.step()
            optimizer.zero_grad()
            micro = 0{extra}
"""


@pytest.mark.parametrize(("test", "extra", "steps"), [
    ("==", "", "accum"),
    (">=", "", "accum"),
    # The counter is assigned elsewhere too, or never reset at the window: the window
    # size is not what the test compares with.
    ("==", "\n        micro = min(micro, 3)", None),
    ("==", "\n        if x.numel() == 0:\n            micro = 0", None),
    ("!=", "", None),
])
def test_a_window_the_loop_counts_itself_has_the_size_it_is_compared_with(
        test: str, extra: str, steps: str | None) -> None:
    loop = only_training_loop(_COUNTER_GATE.format(test=test, extra=extra))
    accumulation = loop.accumulation
    assert accumulation is not None and accumulation.kind == "gated"
    assert accumulation.steps == steps
