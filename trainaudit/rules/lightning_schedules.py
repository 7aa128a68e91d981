"""Lightning's accumulation and a scheduler stepped by hand (TA203's Lightning facts).

With ``Trainer(accumulate_grad_batches=k)`` Lightning runs ``training_step`` on every
micro-batch and steps the optimizer once per ``k`` of them. A scheduler that
``training_step`` steps itself (``self.scheduler.step()``, ``self.lr_schedulers().step()``)
therefore advances ``k`` times per optimizer step; one returned from
``configure_optimizers`` (``"interval": "step"``) is stepped by Lightning per optimizer step.
Manual optimization (``self.automatic_optimization = False``) is the loop model's.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from trainaudit.diagnostics import Span
from trainaudit.model.definitions import assignments
from trainaudit.model.module import ModuleFacts, int_value
from trainaudit.model.objects import file_objects
from trainaudit.model.project import Project
from trainaudit.registry import summarizer

LIGHTNING_FAMILY = "lightning-schedules"


@dataclass(frozen=True)
class HandStep:
    """A scheduler's ``step()`` that a LightningModule's ``training_step`` runs itself."""

    span: Span
    text: str


@dataclass(frozen=True)
class LightningScheduleFacts:
    """Per file: the hand-stepped schedulers of its LightningModules, and the
    ``accumulate_grad_batches`` its ``Trainer(...)`` calls set to a known number above 1
    (line, value)."""

    hand_steps: tuple[HandStep, ...] = ()
    accumulations: tuple[tuple[int, int], ...] = ()


@summarizer(LIGHTNING_FAMILY, triggers=("accumulate_grad_batches", "training_step"),
            requires=((r"accumulate_grad_batches",), (r"def training_step", r"\.step\(")))
def summarize_lightning_schedules(module: ModuleFacts) -> LightningScheduleFacts:
    """See ``LightningScheduleFacts``."""
    return LightningScheduleFacts(tuple(_hand_steps(module)), tuple(_accumulations(module)))


def _hand_steps(module: ModuleFacts) -> list[HandStep]:
    objects = file_objects(module)
    found: list[HandStep] = []
    for cls in module.classes.values():
        if not any("LightningModule" in base for base in module.class_bases(cls)) or _manual(cls):
            continue
        method = f"{module.scope_name(cls)}.training_step"
        for function in [method, *sorted(module.reachable_from(method))]:
            if not function.startswith(f"{module.scope_name(cls)}."):
                continue
            for call in module.calls_by_function.get(function, []):
                func = call.func
                if isinstance(func, ast.Attribute) and func.attr == "step" and not call.args \
                        and not call.keywords and objects.kind(func.value, function) == "scheduler":
                    found.append(HandStep(module.span(call), module.segment(call)))
    return found


def _manual(cls: ast.ClassDef) -> bool:
    """``self.automatic_optimization = False`` anywhere in the class."""
    return any(isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
               and node.value.value is False
               and any(isinstance(t, ast.Attribute) and t.attr == "automatic_optimization"
                       for t in node.targets)
               for node in ast.walk(cls))


def _accumulations(module: ModuleFacts) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for call in module.nodes_by_type.get(ast.Call, ()):
        assert isinstance(call, ast.Call)
        if not (module.call_name(call) or "").endswith("Trainer"):
            continue
        for kw in call.keywords:
            if kw.arg == "accumulate_grad_batches":
                value = _constant(module, kw.value)
                if value is not None and value > 1:
                    found.append((call.lineno, value))
    return found


def _constant(module: ModuleFacts, node: ast.expr) -> int | None:
    """An int literal, or a module-level name assigned one once."""
    literal = int_value(node)
    if literal is not None or not isinstance(node, ast.Name):
        return literal
    values = list(assignments(module.tree.body, node.id))
    return int_value(values[0]) if len(values) == 1 else None


def lightning_schedules(project: Project) -> list[tuple[str, HandStep, str, int, int]]:
    """(path, hand step, trainer's path, its line, k) for every scheduler a LightningModule
    steps by hand in a project whose Lightning ``Trainer`` accumulates ``k`` > 1 batches
    (the module's own file first, else any checked file's trainer)."""
    facts = {summary.path: f for summary, f in project.facts(LIGHTNING_FAMILY)
             if isinstance(f, LightningScheduleFacts)}
    trainers = [(path, line, k) for path, f in sorted(facts.items()) for line, k in f.accumulations]
    if not trainers:
        return []
    found: list[tuple[str, HandStep, str, int, int]] = []
    for path, f in sorted(facts.items()):
        for step in f.hand_steps:
            trainer = next((t for t in trainers if t[0] == path), trainers[0])
            found.append((path, step, *trainer))
    return found
