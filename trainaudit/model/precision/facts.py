"""Mixed-precision facts of one file (``PrecisionFacts``).

- ``AutocastSite``: each autocast call with its device and dtype, resolved
  through simple assignments (``ptdtype = torch.bfloat16``);
- autocast *coverage*: whether a node runs inside an autocast region: a
  ``with`` over an autocast call, over a name bound to one (nanoGPT's
  ``ctx = nullcontext() if ... else torch.amp.autocast(...)``), over a context
  passed in (``with ctx:`` on a parameter), or a function only called from
  such regions or decorated with autocast;
- ``Delegation``: precision handled elsewhere (``Accelerator``, ``Fabric``,
  HF ``TrainingArguments``, FSDP ``MixedPrecision``, bf16 weights...);
- the GradScaler objects (``scalers``, see ``scalers.py``) and the training
  steps (``training_steps``, see ``steps.py``).
"""

from __future__ import annotations

import ast
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from trainaudit.model.module import FunctionNode, ModuleFacts, argument, keyword, walk_local
from trainaudit.model.objects import Kind, file_objects
from trainaudit.model.precision.api import (
    AUTOCAST_APIS,
    CLIP_FUNCTIONS,
    DEFAULT_AUTOCAST_DTYPE,
    dotted,
    low_dtype_of,
    nodes_by_type,
)
from trainaudit.model.precision.scalers import ScalerFacts, find_scalers
from trainaudit.model.precision.steps import DELEGATING_BACKWARD, TrainingStep, TrainingSteps


@dataclass(frozen=True)
class AutocastSite:
    """An autocast call: ``device`` and ``dtype`` when knowable, ``disabled`` when literally off."""

    call: ast.Call
    api: str
    device: str | None
    dtype: str | None
    disabled: bool


@dataclass(frozen=True)
class Delegation:
    """Precision handled by something else (a framework, a wrapper, low-precision weights)."""

    kind: str
    node: ast.AST


_FACTS: weakref.WeakKeyDictionary[ModuleFacts, PrecisionFacts] = weakref.WeakKeyDictionary()
# Calls that hand precision to a framework or a wrapper (their last name).
DELEGATING_CALLS = ("Accelerator", "Fabric", "MixedPrecision", "MixedPrecisionPolicy",
                    "TrainingArguments", "Seq2SeqTrainingArguments", "SFTConfig", "DPOConfig",
                    "GRPOConfig")
_DELEGATION_WORDS = ("Accelerator", "Fabric", "MixedPrecision", "TrainingArguments", "Config(",
                     "Trainer", "initialize", "set_default_dtype", "bfloat16", "half", "float16", "dtype",
                     "double",
                     "backward")
_CONTEXT_NAME_HINTS = ("ctx", "context", "autocast", "amp", "precision", "cast")


class PrecisionFacts:
    """Autocast regions, scalers, delegations and training steps of one file.

    Use ``PrecisionFacts.of(module)``: one instance per parsed file, shared by the
    summarizer and the module rules. Each fact is computed on first use, and
    only when the file's text could contain it.
    """

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module
        self.text = module.source

    @classmethod
    def of(cls, module: ModuleFacts) -> PrecisionFacts:
        found = _FACTS.get(module)
        if found is None:
            found = _FACTS[module] = cls(module)
        return found

    @property
    def _nodes(self) -> dict[type, list[ast.AST]]:
        return nodes_by_type(self.module)

    def _calls(self) -> Iterator[ast.Call]:
        for node in self._nodes.get(ast.Call, []):
            assert isinstance(node, ast.Call)
            yield node

    # -- bindings -------------------------------------------------------------------------

    @cached_property
    def bindings(self) -> dict[str, list[ast.expr]]:
        """Spelling (``ctx``, ``self.ctx``) → every value assigned to it in the file."""
        bound: dict[str, list[ast.expr]] = {}
        nodes = self._nodes
        for node in [*nodes.get(ast.Assign, []), *nodes.get(ast.AnnAssign, []),
                     *nodes.get(ast.NamedExpr, [])]:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                targets, value = [node.target], node.value
            if value is None:
                continue
            for target in targets:
                if isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List) \
                        and len(target.elts) == len(value.elts):
                    for sub_target, sub_value in zip(target.elts, value.elts, strict=True):
                        if (spelled := dotted(sub_target)) is not None:
                            bound.setdefault(spelled, []).append(sub_value)
                elif (spelled := dotted(target)) is not None:
                    bound.setdefault(spelled, []).append(value)
        return bound

    def resolve_dtype(self, node: ast.AST | None, depth: int = 0) -> str | None:
        """The dtype an expression denotes, through names bound once to a literal."""
        if node is None or depth > 4:
            return None
        literal = low_dtype_of(self.module, node)
        if literal is not None:
            return literal
        spelled = dotted(node)
        if spelled is not None and spelled not in self.module.imports.aliases:
            values = self.bindings.get(spelled, [])
            found = {self.resolve_dtype(v, depth + 1) for v in values}
            if len(found) == 1:
                return found.pop()
        if isinstance(node, ast.Call) and (self.module.call_name(node) or "").endswith("getattr"):
            return None
        return None

    # -- autocast -------------------------------------------------------------------------

    @cached_property
    def autocast_sites(self) -> list[AutocastSite]:
        sites: list[AutocastSite] = []
        if "autocast" not in self.text:
            return sites
        for node in self._calls():
            name = self.module.call_name(node)
            if name not in AUTOCAST_APIS:
                continue
            fixed_device = AUTOCAST_APIS[name]
            if fixed_device is None:
                device_node = argument(node, 0, "device_type")
                device = device_node.value if isinstance(device_node, ast.Constant) and \
                    isinstance(device_node.value, str) else None
                dtype_node = argument(node, 1, "dtype")
                enabled_node = argument(node, 2, "enabled")
            else:
                device = fixed_device
                dtype_node = argument(node, 1, "dtype")
                enabled_node = argument(node, 0, "enabled")
            if dtype_node is None:
                dtype = DEFAULT_AUTOCAST_DTYPE.get(device or "")
            else:
                dtype = self.resolve_dtype(dtype_node)
            disabled = isinstance(enabled_node, ast.Constant) and enabled_node.value is False
            sites.append(AutocastSite(node, name, device, dtype, disabled))
        sites.sort(key=lambda s: (s.call.lineno, s.call.col_offset))
        return sites

    def _is_autocast_call(self, call: ast.Call, depth: int = 0) -> bool:
        name = self.module.call_name(call)
        if name in AUTOCAST_APIS:
            return not any(s.call is call and s.disabled for s in self.autocast_sites)
        if isinstance(call.func, ast.Attribute) and call.func.attr == "autocast":
            return True  # accelerator.autocast(), fabric.autocast()
        spelled = dotted(call.func) or ""
        lower = spelled.lower()
        if "autocast" in lower or lower.rsplit(".", 1)[-1].startswith("amp"):
            return True
        if spelled in self.bindings:  # partial(torch.autocast, ...) bound to a name
            return any(self.is_autocast_expr(v, depth + 1) for v in self.bindings[spelled])
        local = self.module.local_callee(call, "")
        if local is not None:  # a helper that returns an autocast context
            fn = self.module.functions[local]
            return any(isinstance(n, ast.Return) and n.value is not None
                       and self.is_autocast_expr(n.value, depth + 1) for n in walk_local(fn.body))
        return False

    def is_autocast_expr(self, expr: ast.expr, depth: int = 0) -> bool:
        """Whether a ``with`` item (or a value bound to one) enters an autocast region."""
        if depth > 4:
            return False
        if isinstance(expr, ast.IfExp):
            return self.is_autocast_expr(expr.body, depth + 1) or self.is_autocast_expr(expr.orelse, depth + 1)
        if isinstance(expr, ast.BoolOp):
            return any(self.is_autocast_expr(v, depth + 1) for v in expr.values)
        if isinstance(expr, ast.Call):
            if self._is_autocast_call(expr, depth):
                return True
            name = self.module.call_name(expr) or ""
            if name.endswith("partial") and expr.args:
                return self.is_autocast_expr(expr.args[0], depth + 1)
            return False
        spelled = dotted(expr)
        if spelled is None:
            return False
        if self.module.qualname(expr) in AUTOCAST_APIS:
            return True  # ``partial(torch.autocast, ...)``'s first argument
        values = self.bindings.get(spelled)
        if values:
            return any(self.is_autocast_expr(v, depth + 1) for v in values)
        # A context passed in (``def train_step(..., ctx)``): trust a name that says so.
        last = spelled.rsplit(".", 1)[-1].lower()
        return any(hint in last for hint in _CONTEXT_NAME_HINTS)

    @cached_property
    def autocast_withs(self) -> list[ast.With | ast.AsyncWith]:
        if "with" not in self.text:
            return []
        return [node for node in [*self._nodes.get(ast.With, []), *self._nodes.get(ast.AsyncWith, [])]
                if isinstance(node, ast.With | ast.AsyncWith)
                and any(self.is_autocast_expr(item.context_expr) for item in node.items)]

    @cached_property
    def covered_functions(self) -> set[str]:
        """Functions that run under autocast: decorated with it, or only called inside it."""
        module = self.module
        covered: set[str] = set()
        if not self.autocast_withs and "autocast" not in self.text:
            return covered
        for name, fn in module.functions.items():
            for deco in fn.decorator_list:
                if (isinstance(deco, ast.Call) and self._is_autocast_call(deco)) \
                        or module.qualname(deco) in AUTOCAST_APIS:
                    covered.add(name)
        # Call sites of each local function, with their caller.
        sites: dict[str, list[tuple[str, ast.Call]]] = {}
        for caller, calls in module.calls_by_function.items():
            for call in calls:
                callee = module.local_callee(call, caller)
                if callee is not None:
                    sites.setdefault(callee, []).append((caller, call))
        changed = True
        while changed:
            changed = False
            for callee, callers in sites.items():
                if callee in covered:
                    continue
                if callers and all(c in covered or self._lexically_covered(call)
                                   for c, call in callers):
                    covered.add(callee)
                    changed = True
        return covered

    @cached_property
    def _autocast_with_ids(self) -> set[int]:
        return set(map(id, self.autocast_withs))

    def _lexically_covered(self, node: ast.AST) -> bool:
        withs = self._autocast_with_ids
        if not withs:
            return False
        for anc in self.module.ancestors(node):
            if id(anc) in withs:
                return True
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                return False
        return False

    def under_autocast(self, node: ast.AST) -> bool:
        """Whether a node runs inside an autocast region (lexically or through its callers)."""
        if self._lexically_covered(node):
            return True
        fn = self.module.enclosing_function(node)
        while fn is not None:
            if self.module.scope_name(fn) in self.covered_functions:
                return True
            fn = self.module.enclosing_function(fn)
        return False

    @cached_property
    def method_autocast(self) -> list[ast.AST]:
        """Autocast used inside a class's methods: the model casts its own forward."""
        found: list[ast.AST] = []
        for site in self.autocast_sites:
            if not site.disabled and self.module.enclosing_class(site.call) is not None:
                found.append(site.call)
        for name, fn in self.module.functions.items():
            if "." in name and name in self.covered_functions \
                    and self.module.enclosing_class(fn) is not None:
                found.append(fn)
        return found

    # -- delegation -----------------------------------------------------------------------

    @cached_property
    def delegations(self) -> list[Delegation]:
        module = self.module
        found: list[Delegation] = []
        if not any(word in self.text for word in _DELEGATION_WORDS):
            return found
        for node in self._calls():
            name = module.call_name(node) or ""
            last = name.rsplit(".", 1)[-1]
            method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            kind: str | None = None
            if last in DELEGATING_CALLS:
                kind = last
            elif last == "Trainer" and keyword(node, "precision") is not None:
                kind = "Trainer(precision=...)"
            elif last.startswith("parallelize") or last in ("fully_shard", "parallelize_module"):
                kind = "parallelize"  # FSDP/TP wrappers set the parameter dtype (torchtitan)
            elif any(k.arg in ("mixed_precision", "mp_policy") for k in node.keywords):
                kind = "mixed_precision="
            elif name in ("deepspeed.initialize", "apex.amp.initialize") or \
                    (last == "initialize" and "amp" in name):
                kind = name
            elif name == "torch.set_default_dtype" and node.args and \
                    self.resolve_dtype(node.args[0]) != "float32":
                kind = "set_default_dtype"
            elif method in ("bfloat16", "half", "double") and not node.args:
                kind = f".{method}()"  # manual low (or deliberately high) precision
            elif method in ("to", "type") and self._chosen_dtype(node):
                kind = ".to(dtype)"
            else:
                for kw in node.keywords:
                    if kw.arg in ("torch_dtype", "param_dtype", "dtype") and \
                            low_dtype_of(module, kw.value) in ("bfloat16", "float16") and \
                            last in ("from_pretrained", "from_config", "to_empty", "Module"):
                        kind = f"{kw.arg}="
            if kind is not None:
                found.append(Delegation(kind, node))
        for _, step in self.steps.backward_calls:
            if self.steps.delegating_backward(step):
                found.append(Delegation("backward", step))
        return found

    def _chosen_dtype(self, call: ast.Call) -> bool:
        """``x.to(torch.bfloat16)``, ``model.to(dtype=ptdtype)``, ``x.to(COMPUTE_DTYPE)``:
        a cast to a dtype other than float32 (or to one the script picks): manual precision."""
        candidates = [k.value for k in call.keywords if k.arg == "dtype"]
        candidates += [a for a in call.args if low_dtype_of(self.module, a) is not None
                       or "dtype" in (dotted(a) or "").lower()
                       or self.module.qualname(a) in ("torch.float64", "torch.double")]
        return any(self._picked_dtype(value) for value in candidates)

    def _picked_dtype(self, value: ast.expr) -> bool:
        """A low or float64 dtype, or one the script picks (a config value, a parameter);
        not float32, nor a dtype taken from a tensor (``promote_types(b.dtype, ...)``)."""
        resolved = self.resolve_dtype(value)
        if resolved is not None:
            return resolved != "float32"
        if self.module.qualname(value) in ("torch.float64", "torch.double"):
            return True
        spelled = dotted(value)
        if spelled is None:
            return False
        root = spelled.split(".", 1)[0].lower()
        if spelled.endswith(".dtype") and not any(h in root for h in ("arg", "config", "cfg", "self")):
            return False  # ``x.to(y.dtype)``: matching a tensor, not choosing a precision
        bound = self.bindings.get(spelled)
        if not bound:
            return True  # a parameter, a config field: chosen outside, unknown
        return any(low_dtype_of(self.module, n) in ("bfloat16", "float16")
                   or self.module.qualname(n) in ("torch.float64", "torch.double")
                   for value in bound for n in ast.walk(value))

    @cached_property
    def scalers(self) -> ScalerFacts:
        if "scaler" not in self.text.lower():
            return ScalerFacts((), {}, {}, set())
        return find_scalers(self.module)

    def scaler_always_disabled(self) -> bool:
        """Every GradScaler is built with ``enabled=False``: it is a no-op."""
        built = [c for calls in self.scalers.constructed.values() for c in calls]
        return bool(built) and all(
            isinstance(e := keyword(c, "enabled"), ast.Constant) and e.value is False for c in built)

    def scaler_conditional(self, call: ast.Call) -> bool:
        """``GradScaler(enabled=(dtype == "float16"))``: on only for some dtypes."""
        enabled = keyword(call, "enabled")
        if enabled is None:
            positional = [a for a in call.args if not isinstance(a, ast.Starred)]
            name = self.module.call_name(call) or ""
            index = 5 if name.startswith("torch.amp") or "." not in name else 4
            enabled = positional[index] if len(positional) > index else None
        return enabled is not None and not (isinstance(enabled, ast.Constant) and enabled.value is True)

    # -- optimizers and clipping ----------------------------------------------------------

    @cached_property
    def steps_an_optimizer(self) -> bool:
        """Some ``optimizer.step()`` / ``scaler.step(optimizer)`` / ``engine.step()`` in the file."""
        for call in self._calls():
            if isinstance(call.func, ast.Attribute) and call.func.attr == "step":
                receiver = dotted(call.func.value) or ""
                if self.kind_of(call.func.value) in ("optimizer", "scaler") \
                        or any(h in receiver.lower() for h in DELEGATING_BACKWARD):
                    return True
        return False

    def kind_of(self, expr: ast.expr | None) -> Kind:
        """What the object of ``expr`` is, by the one object model of the file."""
        if expr is None:
            return ""
        fn = self.module.enclosing_function(expr)
        return file_objects(self.module).kind(expr, self.module.scope_name(fn) if fn is not None else "")

    def is_optimizer(self, expr: ast.expr | None) -> bool:
        return self.kind_of(expr) == "optimizer"

    def is_clip_call(self, call: ast.Call) -> bool:
        """``torch.nn.utils.clip_grad_norm_(...)`` on raw gradients (not a framework's clip)."""
        name = self.module.call_name(call) or ""
        last = name.rsplit(".", 1)[-1]
        if last not in CLIP_FUNCTIONS:
            return False
        receiver = dotted(call.func.value) if isinstance(call.func, ast.Attribute) else None
        if receiver is not None and any(h in receiver.lower() for h in ("accelerator", "fabric", "trainer")):
            return False
        return receiver is None or name.startswith("torch.") or receiver.endswith(("utils", "nn"))


    # -- training steps -------------------------------------------------------------------

    @cached_property
    def steps(self) -> TrainingSteps:
        return TrainingSteps(self.module)

    @property
    def training_steps(self) -> list[TrainingStep]:
        """Each ``backward()`` of the file, traced to its loss and forward."""
        return self.steps.steps

    @property
    def training_functions(self) -> set[str]:
        """Functions whose body calls ``backward()``."""
        return self.steps.functions

    # -- helpers for rules and fixes ------------------------------------------------------

    def statement_list(self, statement: ast.stmt) -> list[ast.stmt] | None:
        """The statement list (a body, an orelse...) that directly holds a statement."""
        parent = self.module.parents.get(statement)
        if parent is None:
            return None
        for name in ("body", "orelse", "finalbody"):
            block = getattr(parent, name, None)
            if isinstance(block, list) and statement in block:
                return block
        return None

    def statement_of(self, node: ast.AST) -> ast.stmt | None:
        if isinstance(node, ast.stmt):
            return node
        return next((a for a in self.module.ancestors(node) if isinstance(a, ast.stmt)), None)

    def scope_of(self, function: str) -> FunctionNode | None:
        return self.module.functions.get(function)

    def names_in_scope(self, function: str) -> dict[str, list[ast.expr | None]]:
        """Names a function can read: parameters (annotation), its assignments, module globals."""
        scope: dict[str, list[ast.expr | None]] = {}
        for stmt in self.module.tree.body:
            for target, value in _assigned(stmt):
                scope.setdefault(target, []).append(value)
        fn = self.scope_of(function)
        if fn is not None:
            args = fn.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                scope[arg.arg] = [arg.annotation]
            for node in walk_local(fn.body):
                if isinstance(node, ast.stmt):
                    for target, value in _assigned(node):
                        scope.setdefault(target, []).append(value)
        return scope


def _assigned(stmt: ast.AST) -> Iterator[tuple[str, ast.expr | None]]:
    if isinstance(stmt, ast.Assign):
        for target in stmt.targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    yield node.id, stmt.value
    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        yield stmt.target.id, stmt.value if stmt.value is not None else stmt.annotation
