"""DeepSpeed engines: ``engine.step()`` runs on every micro-batch and steps the optimizer
(and a scheduler handed to ``deepspeed.initialize``) once per ``gradient_accumulation_steps``
of them, so a scheduler of the loop's own stepped beside it runs per micro-batch.
"""

from __future__ import annotations

import ast

from trainaudit.model.loops.records import Operation, TrainingLoop

ACCUMULATION_KEY = "gradient_accumulation_steps"


def configures_accumulation(tree: ast.Module) -> bool:
    """Whether the file configures DeepSpeed accumulation to anything but 1: a
    ``"gradient_accumulation_steps"`` key of a dict literal, or a keyword of that name,
    whose value is not the constant 1 (a constant above 1, or a name or expression)."""
    for node in ast.walk(tree):
        values: list[ast.expr] = []
        if isinstance(node, ast.Dict):
            values = [v for k, v in zip(node.keys, node.values, strict=True)
                      if isinstance(k, ast.Constant) and k.value == ACCUMULATION_KEY]
        elif isinstance(node, ast.Call):
            values = [k.value for k in node.keywords if k.arg == ACCUMULATION_KEY]
        if any(not (isinstance(v, ast.Constant) and v.value in (0, 1)) for v in values):
            return True
    return False


def schedules_per_micro_batch(loop: TrainingLoop) -> list[tuple[Operation, Operation]]:
    """(scheduler step, engine step) pairs of a DeepSpeed loop where the loop steps its own
    scheduler whenever the engine steps: in the same loops, under no test the engine step
    does not have (``if engine.is_gradient_accumulation_boundary():`` or any other)."""
    engine_steps = [op for op in loop.ops("optimizer_step") if op.framework == "deepspeed"]
    if "deepspeed" not in loop.delegation or not engine_steps:
        return []
    step = engine_steps[0]
    theirs = {(g.site, g.negated) for g in step.guards}
    return [(op, step) for op in loop.ops("scheduler_step")
            if not op.framework and op.loops == step.loops
            and {(g.site, g.negated) for g in op.guards} <= theirs]
