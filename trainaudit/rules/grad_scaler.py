"""GradScaler rules (TA304–TA306): the scaler's protocol, and dtype against scaler
(TA303, clipping before ``unscale_``, is in ``clip_unscale.py``).

They read ``PrecisionFacts``: GradScaler objects (each tied to the locals, ``self.``
attributes and parameters that name it), autocast sites and the training steps.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainaudit.diagnostics import Finding, Related
from trainaudit.model.module import ModuleFacts, keyword, walk_local
from trainaudit.model.precision import PrecisionFacts, ScalerObject, dotted, torch_alias
from trainaudit.model.precision.api import AMP_SINCE
from trainaudit.model.precision.repairs import scaler_removal
from trainaudit.payloads import ScalerInsertion, ScalerRepair
from trainaudit.registry import ModuleRule, RuleContext, register
from trainaudit.requirements import format_version, parse_version

# -- the scaler's protocol (TA303 reads these too) --------------------------------------


def scope_calls(facts: PrecisionFacts, function: str) -> list[ast.Call]:
    """The calls of one function's own body ("" is the module body)."""
    fn = facts.scope_of(function)
    body = fn.body if fn is not None else facts.module.tree.body
    return [n for n in walk_local(body) if isinstance(n, ast.Call)]


def receiver_of(call: ast.Call) -> str | None:
    """``scaler`` of ``scaler.step(...)``, dotted; None for a plain name's call."""
    return dotted(call.func.value) if isinstance(call.func, ast.Attribute) else None


def _scaled(backward: ast.Call) -> bool:
    """``scaler.scale(loss).backward()``."""
    receiver = backward.func.value if isinstance(backward.func, ast.Attribute) else None
    return isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute) \
        and receiver.func.attr == "scale"


def scaled_backward(facts: PrecisionFacts, function: str, backward: ast.AST | None) -> bool:
    """A backward of scaled gradients: ``scaler.scale(loss).backward()``, or ``loss.backward()``
    where the function bound ``loss = scaler.scale(...)`` (the two-statement spelling)."""
    if not isinstance(backward, ast.Call):
        return False
    if _scaled(backward):
        return True
    receiver = backward.func.value if isinstance(backward.func, ast.Attribute) else None
    if not isinstance(receiver, ast.Name):
        return False
    return any(isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
               and value.func.attr == "scale" and receiver_of(value) in facts.scalers.receivers
               for value in facts.names_in_scope(function).get(receiver.id, []))


def _visible(facts: PrecisionFacts, spelled: str, function: str) -> bool:
    """Whether a scaler spelling can be read from a function (a fix may write it there)."""
    root = spelled.split(".", 1)[0]
    if root == "self":
        fn = facts.scope_of(function)
        return fn is not None and "." in function
    return root in facts.names_in_scope(function)


@register
class GradScalerBypassed(ModuleRule):
    """TA304: a GradScaler exists but backward or step go around it, or it never updates.

    - ``loss.backward()`` with a scaler made and never ``scale``-d: nothing is scaled;
    - ``scaler.scale(loss).backward()`` then ``optimizer.step()``: the optimizer
      steps with gradients 65536x too large (and inf/NaN steps are not skipped);
    - ``scaler.step(optimizer)`` without ``scaler.update()``: the scale never
      adapts (it stays at its first value, or collapses after an overflow).
    """

    code = "TA304"
    triggers = ("GradScaler", "scaler")

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterator[Finding]:
        facts = PrecisionFacts.of(module)
        for scaler in facts.scalers.objects:
            if scaler.disabled:
                continue
            if scaler.constructions and not scaler.uses("scale"):
                yield from self._unscaled_backwards(facts, scaler)
            elif scaler.uses("scale") and not scaler.uses("step"):
                yield from self._unscaled_steps(facts, scaler)
            elif scaler.uses("step") and not scaler.uses("update"):
                for use in scaler.uses("step"):
                    spelled = receiver_of(use.call) or "scaler"
                    yield self.report(
                        module, use.call,
                        f"`{spelled}.step(...)` without `{spelled}.update()`: the loss scale "
                        "never adapts",
                        payload=ScalerRepair(spelled, "update"))

    def _unscaled_backwards(self, facts: PrecisionFacts, scaler: ScalerObject) -> Iterator[Finding]:
        """Backwards that can see a scaler never used for scaling."""
        module = facts.module
        for step in facts.training_steps:
            if step.delegated or step.function not in scaler.reach \
                    or module.call_name(step.backward) == "torch.autograd.backward" \
                    or _scaled(step.backward):
                continue
            spelled = scaler.spelling_in(step.function)
            named = spelled or sorted(r.spelled for r in scaler.refs)[0]
            yield self.report(
                module, step.backward,
                f"`backward()` bypasses the GradScaler `{named}`: the loss is never "
                f"scaled; use `{named}.scale(loss).backward()`",
                payload=ScalerRepair(named, "backward") if spelled else None,
                fixable=spelled is not None and _visible(facts, spelled, step.function))

    def _unscaled_steps(self, facts: PrecisionFacts, scaler: ScalerObject) -> Iterator[Finding]:
        """``optimizer.step()`` where this scaler's scaled gradients arrive."""
        module = facts.module
        scaling = {use.function for use in scaler.uses("scale")}
        steps_in = {f for name in scaling for f in module.reachable_from(name)}
        steps_in |= {caller for caller, callees in module.call_graph.items() if callees & scaling}
        for function in sorted(steps_in):
            for node in module.calls_by_function.get(function, []):
                if not (isinstance(node.func, ast.Attribute) and node.func.attr == "step"
                        and not node.args and not node.keywords
                        and facts.is_optimizer(node.func.value)):
                    continue
                spelled = scaler.spelling_in(function)
                named = spelled or receiver_of(scaler.uses("scale")[0].call) or "scaler"
                yield self.report(
                    module, node,
                    f"`{module.segment(node)}` steps with gradients still scaled by "
                    f"`{named}`; use `{named}.step({receiver_of(node)})`",
                    payload=ScalerRepair(named, "step") if spelled else None,
                    fixable=spelled is not None and _visible(facts, spelled, function))


def _function_of(module: ModuleFacts, node: ast.AST) -> str:
    fn = module.enclosing_function(node)
    return module.scope_name(fn) if fn is not None else ""


# -- TA305 / TA306: dtype against scaler -----------------------------------------------------

# The torch release that introduced ``torch.amp.GradScaler``, which TA305's fix writes.
GRAD_SCALER_SINCE = AMP_SINCE["GradScaler"]


def _training_context(facts: PrecisionFacts, function: str) -> bool:
    """Whether code in ``function`` takes part in a training step."""
    module = facts.module
    training = facts.training_functions
    if not training:
        return False
    if function in training or set(module.reachable_from(function)) & training:
        return True
    return any(function in module.call_graph.get(t, ()) for t in training)


def _outer_loop(facts: PrecisionFacts, node: ast.AST) -> ast.stmt | None:
    loop: ast.stmt | None = None
    for anc in facts.module.ancestors(node):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            break
        if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
            loop = anc
    return loop


@register
class Fp16WithoutGradScaler(ModuleRule):
    """TA305: float16 autocast in training with no GradScaler.

    float16 has 5 exponent bits: small gradients underflow to zero without loss
    scaling. bfloat16 (same range as float32) needs no scaler; neither does a
    step whose backward is delegated (``accelerator.backward``).
    """

    code = "TA305"
    triggers = ("autocast",)

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterator[Finding]:
        facts = PrecisionFacts.of(module)
        if not any(s.dtype == "float16" for s in facts.autocast_sites) or facts.scalers.exists():
            return
        if any(d.kind in ("backward", "Accelerator", "Fabric", "deepspeed.initialize",
                          "apex.amp.initialize", "TrainingArguments") for d in facts.delegations):
            return
        for site in facts.autocast_sites:
            if site.dtype != "float16" or site.disabled or _optimizer_scales(facts, site.call):
                continue
            function = _function_of(module, site.call)
            if not _training_context(facts, function):
                continue
            payload = _scaler_fix(facts, site.call, function)
            message = ("float16 autocast in training without a GradScaler: small gradients "
                       "underflow to zero; add `torch.amp.GradScaler` (or use bfloat16)")
            floor = parse_version(str(ctx.options.get("min-torch-version", "")))
            if payload is not None and floor is not None and floor < GRAD_SCALER_SINCE:
                # ``torch.amp.GradScaler`` would raise AttributeError on the older torch the
                # project still supports (the TA302 option says which).
                payload = None
                message += (f" (no automatic fix: `torch.amp.GradScaler` needs torch>="
                            f"{format_version(GRAD_SCALER_SINCE)} and the project admits torch "
                            f"{format_version(floor)})")
            yield self.report(module, site.call, message, payload=payload,
                              fixable=payload is not None)


def _optimizer_scales(facts: PrecisionFacts, autocast: ast.Call) -> bool:
    """``autocast(enabled=isinstance(optimizer, AMPOptimizer))``: the region is on only
    for an optimizer that scales the loss itself."""
    enabled = keyword(autocast, "enabled")
    if enabled is None:
        return False
    for node in ast.walk(enabled):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "isinstance" and node.args \
                and facts.is_optimizer(node.args[0]):
            return True
    return False


def _scaler_fix(facts: PrecisionFacts, autocast: ast.Call, function: str) -> ScalerInsertion | None:
    """What adding a GradScaler takes: one function holding the loop, backward and step.

    The scaler is made before the outermost loop around ``backward()``; each
    backward goes through ``scaler.scale``, each clip gets ``unscale_`` first,
    each ``optimizer.step()`` becomes ``scaler.step`` + ``scaler.update()``.
    """
    module = facts.module
    for step in facts.training_steps:
        if step.delegated or not (step.function == function
                                  or function in module.reachable_from(step.function)
                                  or step.function in module.reachable_from(function)):
            continue
        loop = _outer_loop(facts, step.backward)
        if loop is None:
            continue
        calls = scope_calls(facts, step.function)
        backwards = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "backward"
                     and not facts.steps.delegating_backward(c)]
        optimizer_steps = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "step"
                           and not c.args and facts.is_optimizer(c.func.value)]
        if not backwards or not optimizer_steps:
            continue
        device_node = autocast.args[0] if autocast.args else next(
            (k.value for k in autocast.keywords if k.arg == "device_type"), None)
        device = module.segment(device_node) if device_node is not None else '"cuda"'
        if (module.call_name(autocast) or "").startswith("torch.cuda.amp"):
            device = '"cuda"'
        bound = set(facts.names_in_scope(step.function))
        name = next(n for n in ("scaler", "grad_scaler", "amp_scaler") if n not in bound)
        return ScalerInsertion(
            loop_line=loop.lineno,
            backwards=tuple(module.span(c) for c in backwards),
            clips=tuple(module.span(c) for c in calls if facts.is_clip_call(c)),
            steps=tuple((module.span(c), receiver_of(c) or "optimizer") for c in optimizer_steps),
            device=device, torch_name=torch_alias(module) or "torch", scaler=name)
    return None


@register
class GradScalerWithBf16(ModuleRule):
    """TA306: a GradScaler next to bfloat16 autocast: it only adds work.

    bfloat16 has float32's exponent range, so gradients do not underflow. Not
    flagged when the scaler is conditional (``enabled=(dtype == "float16")``)
    or some autocast in the file may run in float16.
    """

    code = "TA306"
    triggers = ("GradScaler",)

    def check(self, module: ModuleFacts, ctx: RuleContext) -> Iterator[Finding]:
        facts = PrecisionFacts.of(module)
        sites = [s for s in facts.autocast_sites if not s.disabled]
        if not sites or any(s.dtype != "bfloat16" for s in sites):
            return
        for spelled, calls in sorted(facts.scalers.constructed.items()):
            for call in calls:
                if facts.scaler_conditional(call):
                    continue
                yield self.report(
                    module, call,
                    f"GradScaler `{spelled}` with bfloat16 autocast (line {sites[0].call.lineno}): "
                    "bfloat16 does not underflow; the scaler is not needed",
                    related=[Related(module.path, sites[0].call.lineno,
                                     sites[0].call.col_offset + 1, "bfloat16 autocast here")],
                    payload=scaler_removal(facts, spelled))
