"""Words and shapes the loop model recognises: trigger text, names of optimizers,
schedulers and models, accumulation tests."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

# Text the loop model cannot work without: a file with none of these has no training loop
# and no helper a training loop could reach.
LOOP_TRIGGERS = ("backward", ".step(", "zero_grad", "optim")
# A call of a backward (``loss.backward()``, ``accelerator.backward(loss)``,
# ``self.manual_backward(loss)``), not its definition nor the word in prose. Loops train
# only through one, so the analysis's own text tests use it too (and the prefilter may).
BACKWARD_CALL = r"backward(?<!def backward)(?<!def _backward)\s*\("
BACKWARD_CALL_RE = re.compile(BACKWARD_CALL)
# Words in the name of a function that may train (``train_step``, ``update``, ``fit``).
TRAINY_WORDS = r"train|step|update|fit|backward|optim"
# An import whose names may be training helpers (``from utils import train_step``).
TRAINY_IMPORT = rf"import(?:[^\n(]*(?:\\\n[^\n(]*)*|\s*\([^)]*)(?i:{TRAINY_WORDS})"
# Files without any of these have no loop facts: no training loop, no loop that may train
# through an imported helper, no helper that trains.
LOOP_REQUIRES = ((BACKWARD_CALL,), (r"\.step\(",), (TRAINY_IMPORT,))

# A test that decides whether this micro-batch ends an accumulation window.
ACCUMULATION_NAME = re.compile(
    r"accum|sync_grad|boundary|micro|should_step|do_step|update_step|step_now|is_last"
    r"|last_step|optimizer_step|should_update|do_update|is_update|sync\b|^sync",
    re.IGNORECASE,
)
# Calls that make a model rather than run one (``build_model()``, ``create_model(cfg)``).
FACTORY = ("build_", "create_", "make_", "get_", "load_", "init_", "setup_", "prepare_")
CLIP_METHODS = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm",
                           "clip_gradients", "clip_grad_norm_fp32"})
NO_GRAD = frozenset({"torch.no_grad", "torch.inference_mode", "torch.autograd.no_grad",
                      "torch.autograd.grad_mode.no_grad", "torch.enable_grad"})


TRAINY = re.compile(TRAINY_WORDS, re.IGNORECASE)



def first_line(text: str, limit: int = 100) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


_MOD_RIGHT = re.compile(r"%\s*\(?\s*([A-Za-z_][\w.]*|\d+)")


def gate_steps(test: str) -> str | None:
    match = _MOD_RIGHT.search(test)
    return match.group(1) if match else None


_RANGE_ARG = re.compile(r"\bin\s+range\(\s*([^(),]+?)\s*\)\s*:?\s*$")


def micro_loop_steps(header: str) -> str | None:
    match = _RANGE_ARG.search(header)
    return match.group(1) if match else None


def terminates(body: Sequence[ast.stmt]) -> bool:
    """Whether a block always leaves the current iteration (continue/break/return/raise)."""
    return bool(body) and isinstance(body[-1], ast.Continue | ast.Break | ast.Return | ast.Raise)


def names_in(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr


def looks_like_accumulation_test(test: ast.expr) -> bool:
    """``(step + 1) % k == 0``, ``accelerator.sync_gradients``, ``is_last_micro_step`` ..."""
    for sub in ast.walk(test):
        if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Mod):
            return True
    return any(ACCUMULATION_NAME.search(name) for name in names_in(test))


def last_name(text: str) -> str:
    return re.split(r"[.\[\]()]", text.rstrip(")]"))[-1] if text else ""


GradMode = Literal["enabled", "disabled", "maybe"]

# Contexts (and decorators) that turn autograd recording off, by the end of their name.
NO_GRAD_NAMES = ("no_grad", "inference_mode")


def _alternatives(context: str) -> list[str]:
    return [part.strip() for part in context.split("|") if part.strip()]


def grad_mode(contexts: Iterable[str]) -> GradMode:
    """The gradient mode inside ``contexts`` (outermost first)."""
    mode: GradMode = "enabled"
    for context in contexts:
        options = _alternatives(context)
        if any(option.endswith("enable_grad") for option in options):
            mode = "enabled" if all(o.endswith("enable_grad") for o in options) else "maybe"
            continue
        disabling = [o.endswith(NO_GRAD_NAMES) for o in options]
        if options and all(disabling):
            mode = "disabled"
        elif any(disabling) and mode != "disabled":
            mode = "maybe"
    return mode


def counted_windows(body: Sequence[ast.stmt]) -> tuple[tuple[int, ast.expr], ...]:
    """Accumulation windows a loop counts itself: ``micro += 1`` on every pass, then
    ``if micro == K:`` (or ``>=``) whose body sets ``micro = 0`` — a window of K
    micro-batches. (Line of the ``if`` test, K) for each; a counter assigned anywhere else
    in the loop (or counted twice) tells nothing."""
    increments: dict[str, list[ast.AugAssign]] = {}
    for stmt in body:
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add) \
                and isinstance(stmt.value, ast.Constant) and stmt.value.value == 1:
            increments.setdefault(ast.unparse(stmt.target), []).append(stmt)
    found: list[tuple[int, ast.expr]] = []
    for position, stmt in enumerate(body):
        if not isinstance(stmt, ast.If):
            continue
        test = stmt.test
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.Eq | ast.GtE)):
            continue
        counter = ast.unparse(test.left)
        counted = increments.get(counter, [])
        resets = [s for s in stmt.body if isinstance(s, ast.Assign) and len(s.targets) == 1
                  and ast.unparse(s.targets[0]) == counter
                  and isinstance(s.value, ast.Constant) and s.value.value == 0]
        if len(counted) == 1 and body.index(counted[0]) < position and resets \
                and _assignments_to(body, counter) == len(resets) + 1:
            found.append((test.lineno, test.comparators[0]))
    return tuple(found)


def _assignments_to(body: Sequence[ast.stmt], spelled: str) -> int:
    """How many statements of the loop (nested blocks too) assign the spelling."""
    count = 0
    for node in ast.walk(ast.Module(body=list(body), type_ignores=[])):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For)
                   else [])
        count += sum(1 for target in targets for sub in ast.walk(target)
                     if isinstance(sub, ast.Name | ast.Attribute) and ast.unparse(sub) == spelled)
    return count
