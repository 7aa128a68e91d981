"""Mixed-precision rules and fixes (TA301–TA306): facts, codemods, and the fixed code at run time."""

from __future__ import annotations

import ast
import dataclasses
import io
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from tests.helpers import chdir, check_tree, config, fix_tree, found
from trainaudit.cache import ResultCache, _SafeUnpickler
from trainaudit.config import DEFAULT_FIX_OPTIONS
from trainaudit.diagnostics import Span
from trainaudit.discover import discover
from trainaudit.engine import check_files
from trainaudit.fixes import load_fixers
from trainaudit.model.module import ModuleFacts
from trainaudit.model.precision import PrecisionFacts, deprecated_amp_uses
from trainaudit.payloads import AutocastWrap, CheckpointStack, ScalerInsertion, ScalerRepair

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "precision"


def facts_of(source: str) -> PrecisionFacts:
    source = textwrap.dedent(source)
    return PrecisionFacts(ModuleFacts("train.py", "train", source, ast.parse(source)))


def fixed(tmp_path: Path, source: str, **changes: object) -> str:
    (tmp_path / "train.py").write_text(textwrap.dedent(source))
    return fix_tree(tmp_path, **changes).get("train.py", textwrap.dedent(source))


# -- facts ----------------------------------------------------------------------------------


def test_deprecated_uses_resolve_every_import_spelling() -> None:
    facts = facts_of("""
        import torch
        import torch.cuda.amp as tca
        from torch.cuda import amp as a
        from torch.cuda.amp import autocast as ac
        from torch.cpu.amp import GradScaler
        torch.cuda.amp.autocast()
        tca.GradScaler()
        a.custom_fwd
        ac(True)
        GradScaler()
        torch.autocast("cuda")       # the new API
        autocast = None
        autocast()                   # a local name, not the import
    """)
    uses = deprecated_amp_uses(facts.module)
    assert [(u.qualname, u.spelling, u.form) for u in uses] == [
        ("torch.cuda.amp.autocast", "qualified", "call"),
        ("torch.cuda.amp.GradScaler", "module", "call"),
        ("torch.cuda.amp.custom_fwd", "module", "reference"),
        ("torch.cuda.amp.autocast", "name", "call"),
        ("torch.cpu.amp.GradScaler", "name", "call"),
    ]
    assert [u.fixable for u in uses] == [True, True, False, True, True]


def test_autocast_dtype_and_device_are_resolved_through_names() -> None:
    facts = facts_of("""
        import torch
        half = torch.float16
        a = torch.autocast("cuda", dtype=half)
        b = torch.autocast("cuda")                    # cuda's default: float16
        c = torch.autocast("cpu")                     # cpu's default: bfloat16
        d = torch.amp.autocast(device_type, dtype=pick())
        e = torch.cuda.amp.autocast(enabled=False)
    """)
    assert [(s.device, s.dtype, s.disabled) for s in facts.autocast_sites] == [
        ("cuda", "float16", False), ("cuda", "float16", False), ("cpu", "bfloat16", False),
        (None, None, False), ("cuda", "float16", True)]


def test_autocast_coverage_follows_names_callers_and_decorators() -> None:
    facts = facts_of("""
        import contextlib
        import torch
        ctx = contextlib.nullcontext() if cpu else torch.amp.autocast("cuda", dtype=torch.bfloat16)

        def loss_of(model, x):
            return model(x).sum()

        @torch.autocast("cuda")
        def decorated(model, x):
            return model(x)

        def with_param(model, x, amp_ctx):
            with amp_ctx:
                return model(x)

        def plain(model, x):
            with open("log") as log:
                return model(x)

        def loop(model, x):
            with ctx:
                loss_of(model, x)
    """)
    module = facts.module
    forward = {name: next(c for c in ast.walk(fn) if isinstance(c, ast.Call)
                          and isinstance(c.func, ast.Name) and c.func.id == "model")
               for name, fn in module.functions.items() if name != "loop"}
    assert {name: facts.under_autocast(call) for name, call in forward.items()} == {
        "loss_of": True, "decorated": True, "with_param": True, "plain": False}


def test_training_step_finds_the_forward_behind_the_loss() -> None:
    facts = facts_of("""
        def step(model, batch, criterion, accum):
            out = model(batch["x"])
            logits = out.logits
            loss = criterion(logits, batch["y"])
            loss = loss / accum
            scaler.scale(loss).backward()
    """)
    (step,) = facts.training_steps
    assert step.loss_name == "loss"
    assert step.forward is not None and facts.module.segment(step.forward) == 'model(batch["x"])'
    assert [s.lineno for s in step.loss_statements] == [6]  # the latest; the rest is followed


# -- rules ----------------------------------------------------------------------------------


def test_ta301_reported_once_per_forward_with_its_wrap_range(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent("""
        import torch

        def train(model, loader, opt):
            for x, y in loader:
                out = model(x)
                loss = torch.nn.functional.mse_loss(out, y)
                loss.backward()
                (loss * 2).backward()
                opt.step()
                opt.zero_grad()

        DEVICE = "cuda"  # a GPU training script
    """))
    result = check_tree(tmp_path, select=("TA301",))
    assert found(result) == {("train.py", 6, 15, "TA301")}
    (finding,) = result.findings
    assert finding.payload == AutocastWrap(first_line=6, last_line=7, device_type="x.device.type",
                                           torch_name="torch", add_import=False, function="train")


# -- fixes ----------------------------------------------------------------------------------


def test_ta302_positional_arguments_become_keywords_where_positions_differ(tmp_path: Path) -> None:
    out = fixed(tmp_path, """
        import torch
        a = torch.cuda.amp.autocast(True, torch.bfloat16, False)
        b = torch.cuda.amp.GradScaler(1024.0, 2.0, 0.5, 100, True)
        c = torch.cpu.amp.autocast(False)
    """, unsafe_fixes=False, select=("TA302",))
    assert out == textwrap.dedent("""
        import torch
        a = torch.autocast("cuda", enabled=True, dtype=torch.bfloat16, cache_enabled=False)
        b = torch.amp.GradScaler("cuda", 1024.0, 2.0, 0.5, 100, True)
        c = torch.autocast("cpu", enabled=False)
    """)


def test_ta302_keeps_an_import_that_an_unfixable_use_still_needs(tmp_path: Path) -> None:
    out = fixed(tmp_path, """
        import functools
        from torch.cuda.amp import autocast

        ctx = functools.partial(autocast, dtype=None)
        with autocast():
            pass
    """, unsafe_fixes=False, select=("TA302",))
    # ``partial(autocast, ...)`` cannot be rewritten, so neither can the name's import.
    assert "from torch.cuda.amp import autocast" in out
    assert found(check_tree(tmp_path, select=("TA302",))) == {
        ("train.py", 5, 25, "TA302"), ("train.py", 6, 6, "TA302")}


def test_ta301_float16_option_adds_a_scaler_in_the_next_round(tmp_path: Path) -> None:
    out = fixed(tmp_path, """
        import torch

        def train(model, loader, optimizer, device_type):
            for x, y in loader:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()

        DEVICE = "cuda"  # a GPU training script
    """, select=("TA3",), fix_options={**DEFAULT_FIX_OPTIONS, "autocast-dtype": "float16"})
    assert out == textwrap.dedent("""
        import torch

        def train(model, loader, optimizer, device_type):
            scaler = torch.amp.GradScaler(device_type, enabled=device_type == "cuda")
            for x, y in loader:
                with torch.autocast(
                    device_type=device_type, dtype=torch.float16, enabled=device_type == "cuda"
                ):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()

        DEVICE = "cuda"  # a GPU training script
    """)
    (tmp_path / "train.py").write_text(out)
    assert found(check_tree(tmp_path, select=("TA3",))) == set()


def test_ta301_adds_import_torch_when_missing(tmp_path: Path) -> None:
    out = fixed(tmp_path, """
        from torch import nn

        def train(net: nn.Module, loader, opt, device):
            for x, y in loader:
                pred = net(x.to(device))
                loss = nn.functional.mse_loss(pred, y.to(device))
                loss.backward()
                opt.step()
                opt.zero_grad()

        DEVICE = "cuda"  # a GPU training script
    """, select=("TA301",))
    assert out.startswith("\nimport torch\nfrom torch import nn\n")
    assert ("        with torch.autocast(\n"
            "            device_type=torch.device(device).type,\n"
            "            dtype=torch.bfloat16,\n"
            "            enabled=torch.device(device).type == \"cuda\",\n"
            "        ):\n") in out


# -- the fixed code at run time -----------------------------------------------------------

torch = pytest.importorskip("torch")

DEPRECATED_SCRIPT = '''
import torch
import torch.cuda.amp
from torch.cpu.amp import autocast as cpu_autocast
from torch.cuda import amp
from torch.cuda.amp import GradScaler as Scaler, custom_bwd, custom_fwd


class Double(torch.autograd.Function):
    @staticmethod
    @custom_fwd
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    @custom_bwd
    def backward(ctx, grad):
        return 2 * grad


torch.manual_seed(0)
model = torch.nn.Linear(8, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = Scaler(2.0**8, enabled=False)  # no CUDA here: a pass-through scaler
spare: torch.cuda.amp.GradScaler = amp.GradScaler(enabled=False)
x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
for _ in range(3):
    with cpu_autocast(True, torch.bfloat16):
        logits = model(Double.apply(x))
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    with torch.cuda.amp.autocast(False):
        pass
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
print(f"{loss.item():.6f} {logits.dtype}")
'''


def _run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error::FutureWarning", str(script)],
                          capture_output=True, text=True, timeout=120, cwd=script.parent)


def test_deprecated_amp_script_is_rewritten_and_runs_without_future_warning(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(DEPRECATED_SCRIPT)
    before = _run(script)
    assert before.returncode != 0 and "FutureWarning" in before.stderr  # the test can fail
    fixed_source = fix_tree(tmp_path, unsafe_fixes=False, select=("TA302",))["train.py"]
    assert "torch.cuda.amp" not in fixed_source and "torch.cpu.amp" not in fixed_source
    assert "from torch.amp import autocast as cpu_autocast" in fixed_source
    assert 'with cpu_autocast("cpu", enabled=True, dtype=torch.bfloat16):' in fixed_source
    assert "@custom_fwd(device_type=\"cuda\")" in fixed_source
    script.write_text(fixed_source)
    after = _run(script)
    assert after.returncode == 0, after.stderr
    assert after.stdout.split()[1] == "torch.bfloat16"  # autocast really ran
    # The old spelling, with the warning silenced, computes the same loss.
    reference = subprocess.run([sys.executable, "-W", "ignore::FutureWarning", "-c", DEPRECATED_SCRIPT],
                               capture_output=True, text=True, timeout=120)
    assert reference.stdout == after.stdout
    assert found(check_tree(tmp_path, select=("TA3",))) == set()


STEP_TRAINER = '''
import torch
import torch.nn.functional as F


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(32, 16)
        self.proj = torch.nn.Linear(16, 32)

    def forward(self, ids):
        return self.proj(self.embed(ids))


def train_step(model, batch, optimizer, device: str):
    optimizer.zero_grad()
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    logits = model(input_ids)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def main(device="cpu"):
    torch.manual_seed(0)
    model = Tiny().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch = {"input_ids": torch.randint(0, 32, (4, 8)), "labels": torch.randint(0, 32, (4, 8))}
    losses = [train_step(model, batch, optimizer, device) for _ in range(5)]
    return losses, seen


DEVICE = "cuda"  # a GPU training script, run here on the CPU
'''


def test_fixed_train_step_keeps_full_precision_on_cpu_without_a_warning(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(STEP_TRAINER)
    assert {f.code for f in check_tree(tmp_path, select=("TA3",)).findings} == {"TA301"}
    source = fix_tree(tmp_path, select=("TA3",))["train.py"]
    assert 'enabled=torch.device(device).type == "cuda",' in source
    namespace: dict[str, object] = {}
    exec(compile(source, "train.py", "exec"), namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "CUDA is not available. Disabling" would raise
        losses, seen = namespace["main"]()  # type: ignore[operator]
    assert set(seen) == {torch.float32}  # autocast is on where the device is CUDA only
    assert losses[-1] < losses[0]
    (tmp_path / "train.py").write_text(source)
    assert found(check_tree(tmp_path, select=("TA3",))) == set()


# -- payloads: typed, picklable, read back from the cache --------------------------------


def test_payloads_survive_the_cache_and_jobs(tmp_path: Path) -> None:
    """Findings cross worker processes and the on-disk cache: their payloads with them."""
    (tmp_path / "train.py").write_text((FIXTURES / "scaler_passed_to_step.py").read_text())
    with chdir(tmp_path):
        cfg = config(select=("TA304",))
        files, _ = discover([Path(".")], cfg)
        runs = []
        for _ in range(2):  # cold, then warm (read back through the restricted unpickler)
            cache = ResultCache(tmp_path, lazy_summaries=True)
            runs.append(check_files(files, cfg, jobs=2, analyse=cache.analyse, project=cache.project))
    assert cache.stats.hits == 1
    cold, warm = (run.findings[0].payload for run in runs)
    assert cold == warm == ScalerRepair(scaler="grad_scaler", kind="step")


def test_fixer_reads_only_the_payload(tmp_path: Path) -> None:
    """A finding without its payload gets no edit: the fixer does not re-analyse the file."""
    source = (FIXTURES / "scaler_passed_to_step.py").read_text()
    (tmp_path / "train.py").write_text(source)
    (finding,) = check_tree(tmp_path, select=("TA304",)).findings
    fixer = load_fixers()["TA304"]
    assert fixer(source, [dataclasses.replace(finding, payload=None)], {}).source == source
    assert "grad_scaler.step(optimizer)" in fixer(source, [finding], {}).source


def test_payload_pickles_with_the_cache_unpickler() -> None:
    stack = CheckpointStack(class_name="Model", class_line=3, stack="self.blocks", kind="loop",
                            init_line=5, has_flag=False, checkpoint="checkpoint",
                            checkpoint_import="from torch.utils.checkpoint import checkpoint",
                            checkpoint_binds="checkpoint")
    wrap = ScalerInsertion(loop_line=4, backwards=(Span(5, 9, 5, 25),), clips=(),
                           steps=((Span(6, 9, 6, 25), "optimizer"),), device='"cuda"',
                           torch_name="torch", scaler="scaler")
    for payload in (stack, wrap):
        loaded = _SafeUnpickler(io.BytesIO(pickle.dumps(payload))).load()
        assert loaded == payload and type(loaded) is type(payload)
