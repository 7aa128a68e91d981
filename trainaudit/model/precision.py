"""Mixed-precision facts of one file.

- ``DeprecatedAmpUse``: each reference to ``torch.cuda.amp.*`` / ``torch.cpu.amp.*``
  (``autocast``, ``GradScaler``, ``custom_fwd``, ``custom_bwd``), whatever the
  import spelling, and whether a rename can fix it;
- ``AutocastSite``: each autocast call with its device and dtype, resolved
  through simple assignments (``ptdtype = torch.bfloat16``);
- autocast *coverage*: whether a node runs inside an autocast region: a
  ``with`` over an autocast call, over a name bound to one (nanoGPT's
  ``ctx = nullcontext() if ... else torch.amp.autocast(...)``), over a context
  passed in (``with ctx:`` on a parameter), or a function only called from
  such regions or decorated with autocast;
- ``ScalerFacts``: GradScaler objects and their ``scale`` / ``unscale_`` /
  ``step`` / ``update`` calls;
- ``Delegation``: precision handled elsewhere (``Accelerator``, ``Fabric``,
  HF ``TrainingArguments``, FSDP ``MixedPrecision``, bf16 weights...);
- ``TrainingStep``: a ``backward()`` call, the loss it differentiates and the
  forward call that loss comes from (a small stand-in for the training-loop
  model, enough for these rules).
"""

from __future__ import annotations

import ast
import builtins
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

from trainaudit.model.module import FunctionNode, ModuleFacts, argument, keyword, walk_local
from trainaudit.model.project import Project

# -- the AMP API -------------------------------------------------------------------------


@dataclass(frozen=True)
class AmpApi:
    """One deprecated AMP entry point and its device."""

    kind: str  # autocast | GradScaler | custom_fwd | custom_bwd
    device: str  # cuda | cpu


DEPRECATED_MODULES = {"torch.cuda.amp": "cuda", "torch.cpu.amp": "cpu"}
DEPRECATED_AMP: dict[str, AmpApi] = {
    "torch.cuda.amp.autocast": AmpApi("autocast", "cuda"),
    "torch.cuda.amp.autocast_mode.autocast": AmpApi("autocast", "cuda"),
    "torch.cuda.amp.GradScaler": AmpApi("GradScaler", "cuda"),
    "torch.cuda.amp.grad_scaler.GradScaler": AmpApi("GradScaler", "cuda"),
    "torch.cuda.amp.custom_fwd": AmpApi("custom_fwd", "cuda"),
    "torch.cuda.amp.autocast_mode.custom_fwd": AmpApi("custom_fwd", "cuda"),
    "torch.cuda.amp.custom_bwd": AmpApi("custom_bwd", "cuda"),
    "torch.cuda.amp.autocast_mode.custom_bwd": AmpApi("custom_bwd", "cuda"),
    "torch.cpu.amp.autocast": AmpApi("autocast", "cpu"),
    "torch.cpu.amp.autocast_mode.autocast": AmpApi("autocast", "cpu"),
    "torch.cpu.amp.GradScaler": AmpApi("GradScaler", "cpu"),
    "torch.cpu.amp.grad_scaler.GradScaler": AmpApi("GradScaler", "cpu"),
}
# Parameters of the deprecated callables, in order, and of their replacements
# after the device argument. A positional argument keeps its position only
# while both lists agree (``torch.cuda.amp.autocast(True)`` is ``enabled``).
OLD_PARAMETERS = {
    "autocast": ("enabled", "dtype", "cache_enabled"),
    "GradScaler": ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled"),
    "custom_fwd": ("fwd",),
    "custom_bwd": ("bwd",),
}
NEW_PARAMETERS = {
    "autocast": ("dtype", "enabled", "cache_enabled"),
    "GradScaler": ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled"),
    "custom_fwd": ("fwd",),
    "custom_bwd": ("bwd",),
}

AUTOCAST_APIS: dict[str, str | None] = {
    "torch.autocast": None,
    "torch.amp.autocast": None,
    "torch.amp.autocast_mode.autocast": None,
    **{name: api.device for name, api in DEPRECATED_AMP.items() if api.kind == "autocast"},
}
LOW_DTYPES = {
    "torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.half": "float16",
    "torch.float32": "float32", "torch.float": "float32",
}
# Autocast's default dtype per device when none is given.
DEFAULT_AUTOCAST_DTYPE = {"cuda": "float16", "cpu": "bfloat16", "xpu": "bfloat16",
                          "mps": "float16", "hpu": "bfloat16"}

CLIP_FUNCTIONS = ("clip_grad_norm_", "clip_grad_value_", "clip_grad_norm", "clip_grad_value")
SCALER_METHODS = ("scale", "unscale_", "step", "update")


_NODE_INDEX: weakref.WeakKeyDictionary[ModuleFacts, dict[type, list[ast.AST]]] = (
    weakref.WeakKeyDictionary())


def nodes_by_type(module: ModuleFacts) -> dict[type, list[ast.AST]]:
    """Every node of a file grouped by its type, in walk order (built once per file).

    Read from ``module.parents`` (which other rules build anyway), so it costs no
    extra tree walk.
    """
    found = _NODE_INDEX.get(module)
    if found is None:
        found = {}
        for node in module.parents:
            found.setdefault(type(node), []).append(node)
        _NODE_INDEX[module] = found
    return found


def dotted(node: ast.AST) -> str | None:
    """The source spelling of a ``Name``/``Attribute`` chain (``self.scaler``), no aliasing."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def low_dtype_of(module: ModuleFacts, node: ast.AST | None) -> str | None:
    """``bfloat16`` / ``float16`` / ``float32`` when a node is literally that dtype."""
    if node is None:
        return None
    name = module.qualname(node)
    if name in LOW_DTYPES:
        return LOW_DTYPES[name]
    if isinstance(node, ast.Constant) and node.value in ("bfloat16", "float16", "float32", "bf16",
                                                         "fp16", "half"):
        return {"bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(
            str(node.value), str(node.value))
    return None


# -- deprecated API uses -----------------------------------------------------------------


@dataclass(frozen=True)
class DeprecatedAmpUse:
    """One reference to a deprecated AMP callable.

    ``form``: ``call`` (``autocast(...)``, also ``@custom_fwd(...)``), ``decorator``
    (bare ``@custom_fwd``) or ``reference`` (an annotation, ``partial(autocast)``...).
    ``spelling``: ``qualified`` (``torch.cuda.amp.X``), ``module`` (``amp.X`` with
    ``amp`` bound to ``torch.cuda.amp``) or ``name`` (``X`` imported from it).
    """

    node: ast.expr
    qualname: str
    api: AmpApi
    form: str
    spelling: str
    local_name: str  # the name the spelling starts from: torch, amp, autocast...

    @property
    def fixable(self) -> bool:
        if self.form == "reference":
            return self.api.kind == "GradScaler"
        if self.form == "call" and self.api.kind == "autocast":
            call = self.node
            assert isinstance(call, ast.Call)
            return not any(isinstance(a, ast.Starred) for a in call.args)
        return True

    @property
    def replacement(self) -> str:
        """How the new spelling reads, for messages."""
        if self.api.kind == "autocast":
            return f'torch.autocast("{self.api.device}", ...)'
        if self.api.kind == "GradScaler":
            return f'torch.amp.GradScaler("{self.api.device}", ...)'
        return f'torch.amp.{self.api.kind}(device_type="{self.api.device}")'


def deprecated_amp_uses(module: ModuleFacts) -> list[DeprecatedAmpUse]:
    """Every reference to a deprecated AMP callable, in source order."""
    uses: list[DeprecatedAmpUse] = []
    parents = module.parents
    index = nodes_by_type(module)
    for node in [*index.get(ast.Name, []), *index.get(ast.Attribute, [])]:
        if not isinstance(node, ast.Name | ast.Attribute) or not isinstance(node.ctx, ast.Load):
            continue
        name = module.qualname(node)
        if name is None or name not in DEPRECATED_AMP:
            continue
        root: ast.expr = node
        while isinstance(root, ast.Attribute):
            root = root.value
        assert isinstance(root, ast.Name)
        bound = module.imports.aliases.get(root.id)
        if bound is None:
            continue  # a local variable that happens to share the name
        if _compatibility_fallback(module, node):
            continue
        if bound == "torch":
            spelling = "qualified"
        elif bound in DEPRECATED_MODULES:
            spelling = "module"
        elif bound in DEPRECATED_AMP:
            spelling = "name"
        else:
            spelling = "qualified"  # ``from torch import cuda; cuda.amp.autocast``
        parent = parents.get(node)
        form = "reference"
        target: ast.expr = node
        if isinstance(parent, ast.Call) and parent.func is node:
            form, target = "call", parent
        elif isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef) and node in parent.decorator_list:
            form = "decorator"
        uses.append(DeprecatedAmpUse(target, name, DEPRECATED_AMP[name], form, spelling, root.id))
    uses.sort(key=lambda u: (u.node.lineno, u.node.col_offset))
    return uses


def _compatibility_fallback(module: ModuleFacts, node: ast.AST) -> bool:
    """Inside ``if torch version >= 2.3: new API else: old API`` or a ``try``/``except``
    that falls back to the old API: code kept on purpose for old torch versions."""
    child = node
    for anc in module.ancestors(node):
        if isinstance(anc, ast.If | ast.IfExp):
            test = module.segment(anc.test).lower()
            if "version" in test or "hasattr" in test or "is_torch" in test:
                return True
        if isinstance(anc, ast.Try) and any(child in h.body for h in anc.handlers):
            return True
        if isinstance(anc, ast.ExceptHandler):
            return True
        child = anc
    return False


# -- autocast ----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ScalerFacts:
    """GradScalers of a file: where they are made and how their methods are used."""

    # Receiver spelling (``scaler``, ``self.scaler``) → construction calls.
    constructed: dict[str, list[ast.Call]]
    # Method (scale, unscale_, step, update) → calls on any scaler receiver.
    calls: dict[str, list[ast.Call]]
    receivers: set[str]

    def exists(self) -> bool:
        return bool(self.constructed) or bool(self.receivers)

    def uses(self, method: str) -> list[ast.Call]:
        return self.calls.get(method, [])


@dataclass
class TrainingStep:
    """A ``backward()`` call, the loss it differentiates and the forward that loss comes from."""

    function: str  # dotted name in the file, '' for module level
    backward: ast.Call
    loss_name: str | None = None
    # Statements that define the loss, latest first (``loss = loss / n``, ``loss = F.ce(...)``).
    loss_statements: list[ast.stmt] = field(default_factory=list)
    forward: ast.Call | None = None
    forward_function: str = ""  # where the forward call is (a helper may compute the loss)
    delegated: bool = False  # accelerator.backward(loss), fabric.backward(loss)...


Assignment = ast.Assign | ast.AnnAssign | ast.AugAssign
_FACTS: weakref.WeakKeyDictionary[ModuleFacts, PrecisionFacts] = weakref.WeakKeyDictionary()
# Calls that hand precision to a framework or a wrapper (their last name).
DELEGATING_CALLS = ("Accelerator", "Fabric", "MixedPrecision", "MixedPrecisionPolicy",
                    "TrainingArguments", "Seq2SeqTrainingArguments", "SFTConfig", "DPOConfig",
                    "GRPOConfig")
_DELEGATION_WORDS = ("Accelerator", "Fabric", "MixedPrecision", "TrainingArguments", "Config(",
                     "Trainer", "initialize", "set_default_dtype", "bfloat16", "half", "float16",
                     "backward")
_BUILTINS = set(dir(builtins))
_TENSOR_METHODS = {
    "view", "reshape", "contiguous", "to", "float", "half", "bfloat16", "mean", "sum", "size",
    "item", "chunk", "split", "transpose", "permute", "flatten", "softmax", "log_softmax",
    "argmax", "detach", "clone", "unsqueeze", "squeeze", "masked_fill", "cuda", "cpu", "long",
    "int", "type", "view_as", "expand", "repeat", "gather", "get", "pop", "items", "keys",
    "values", "append", "format", "numel", "backward", "step", "zero_grad", "max", "min",
    "norm", "pow", "sqrt", "exp", "log", "abs", "squeeze_", "narrow", "index_select", "t",
}
_LOSS_HINTS = ("loss", "criterion", "crit", "metric", "acc", "objective", "cost")
_MODEL_ATTR_HINTS = ("model", "net", "module", "encoder", "decoder", "backbone", "forward",
                     "transformer", "policy", "network", "llm", "lm", "gpt", "unet", "engine")
_DELEGATING_BACKWARD = ("accelerator", "fabric", "engine", "deepspeed", "trainer", "booster",
                        "strategy", "ds_")
_CONTEXT_NAME_HINTS = ("ctx", "context", "autocast", "amp", "precision", "cast")


def _is_loss_like(name: str) -> bool:
    lower = name.lower().rsplit(".", 1)[-1]
    return any(h in lower for h in _LOSS_HINTS)


class PrecisionFacts:
    """Autocast regions, scalers, delegations and training steps of one file.

    Use ``PrecisionFacts.of(module)``: one instance per parsed file, shared by the
    summarizer and the module rules. Each fact is computed on first use, and
    only when the file's text could contain it.
    """

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module
        self.text = module.source
        self._assignment_cache: dict[str, dict[str, list[Assignment]]] = {}

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
                    low_dtype_of(module, node.args[0]) in ("bfloat16", "float16"):
                kind = "set_default_dtype"
            elif method in ("bfloat16", "half") and not node.args and self._model_receiver(node):
                kind = f".{method}()"
            elif method == "to" and self._model_receiver(node) and any(
                    low_dtype_of(module, a) in ("bfloat16", "float16")
                    for a in [*node.args, *(k.value for k in node.keywords)]):
                kind = ".to(low precision)"
            else:
                for kw in node.keywords:
                    if kw.arg in ("torch_dtype", "param_dtype", "dtype") and \
                            low_dtype_of(module, kw.value) in ("bfloat16", "float16") and \
                            last in ("from_pretrained", "from_config", "to_empty", "Module"):
                        kind = f"{kw.arg}="
            if kind is not None:
                found.append(Delegation(kind, node))
        for _, step in self._backward_calls:
            if self._delegating_backward(step):
                found.append(Delegation("backward", step))
        return found

    def _model_receiver(self, call: ast.Call) -> bool:
        """A cast applied to a model, not to a batch: ``model.to(torch.bfloat16)``."""
        assert isinstance(call.func, ast.Attribute)
        receiver = call.func.value
        texts = [dotted(receiver) or ""]
        if isinstance(receiver, ast.Call):
            texts.append(dotted(receiver.func) or "")
            statement = next((a for a in self.module.ancestors(call) if isinstance(a, ast.stmt)), None)
            if isinstance(statement, ast.Assign):
                texts.extend(dotted(t) or "" for t in statement.targets)
        return any(any(h in t.lower() for h in ("model", "net", "policy", "llm", "module"))
                   or (t and t[0].isupper()) for t in texts)

    # -- scalers --------------------------------------------------------------------------

    @cached_property
    def scalers(self) -> ScalerFacts:
        module = self.module
        constructed: dict[str, list[ast.Call]] = {}
        if "scaler" not in self.text.lower():
            return ScalerFacts(constructed, {}, set())
        for spelled, values in self.bindings.items():
            for value in values:
                for call in ast.walk(value):
                    if isinstance(call, ast.Call) and \
                            (module.call_name(call) or "").rsplit(".", 1)[-1].endswith("GradScaler"):
                        constructed.setdefault(spelled, []).append(call)
        receivers = set(constructed)
        calls: dict[str, list[ast.Call]] = {}
        for node in self._calls():
            if isinstance(node.func, ast.Attribute) and node.func.attr in SCALER_METHODS:
                receiver = dotted(node.func.value)
                if receiver is None:
                    continue
                if receiver in constructed or "scaler" in receiver.rsplit(".", 1)[-1].lower():
                    receivers.add(receiver)
                    calls.setdefault(node.func.attr, []).append(node)
        for method_calls in calls.values():
            method_calls.sort(key=lambda c: (c.lineno, c.col_offset))
        return ScalerFacts(constructed, calls, receivers)

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
    def optimizer_names(self) -> set[str]:
        """Spellings bound to optimizers (``torch.optim.AdamW(...)``) or named so."""
        names: set[str] = set()
        for spelled, values in self.bindings.items():
            for value in values:
                if isinstance(value, ast.Call):
                    qual = self.module.call_name(value) or ""
                    if (qual.startswith("torch.optim.") and "lr_scheduler" not in qual) \
                            or qual.rsplit(".", 1)[-1] in ("AdamW", "Adam", "SGD", "Lion", "Adafactor"):
                        names.add(spelled)
        return names

    @cached_property
    def steps_an_optimizer(self) -> bool:
        """Some ``optimizer.step()`` / ``scaler.step(optimizer)`` / ``engine.step()`` in the file."""
        for call in self._calls():
            if isinstance(call.func, ast.Attribute) and call.func.attr == "step":
                receiver = dotted(call.func.value) or ""
                if self.is_optimizer(receiver) or "scaler" in receiver.lower() \
                        or any(h in receiver.lower() for h in _DELEGATING_BACKWARD):
                    return True
        return False

    def is_optimizer(self, spelled: str | None) -> bool:
        if spelled is None:
            return False
        last = spelled.rsplit(".", 1)[-1].lower()
        if "sched" in last or "scaler" in last:
            return False
        return spelled in self.optimizer_names or "optim" in last or last in ("opt", "optimiser")

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
    def _backward_calls(self) -> list[tuple[str, ast.Call]]:
        module = self.module
        found: list[tuple[str, ast.Call]] = []
        if "backward" not in self.text:
            return found
        for function, calls in module.calls_by_function.items():
            for call in calls:
                is_backward = (isinstance(call.func, ast.Attribute) and call.func.attr in
                               ("backward", "manual_backward")) or \
                    module.call_name(call) == "torch.autograd.backward"
                if not is_backward:
                    continue
                cls = module.enclosing_class(call)
                if cls is not None and any(b.endswith("Function") for b in module.class_bases(cls)):
                    continue  # inside a custom autograd.Function
                found.append((function, call))
        return found

    def _delegating_backward(self, call: ast.Call) -> bool:
        if not isinstance(call.func, ast.Attribute):
            return False
        if call.func.attr == "manual_backward":
            return True
        receiver = (dotted(call.func.value) or "").lower()
        return bool(call.args) and any(h in receiver for h in _DELEGATING_BACKWARD)

    @cached_property
    def training_steps(self) -> list[TrainingStep]:
        steps: list[TrainingStep] = []
        for function, call in self._backward_calls:
            step = TrainingStep(function, call, delegated=self._delegating_backward(call))
            if step.delegated or self.module.call_name(call) == "torch.autograd.backward":
                root: ast.expr | None = call.args[0] if call.args else None
            else:
                assert isinstance(call.func, ast.Attribute)
                root = call.func.value
            if root is not None:
                root = _loss_root(root)
                self._trace_loss(step, root)
            steps.append(step)
        return steps

    @property
    def training_functions(self) -> set[str]:
        """Functions whose body calls ``backward()``."""
        return {function for function, _ in self._backward_calls}

    def _scope_body(self, function: str) -> list[ast.stmt]:
        if function == "":
            return self.module.tree.body
        return self.module.functions[function].body

    def _assignments_in(self, function: str) -> dict[str, list[Assignment]]:
        """Name → statements assigning it in one scope (cached per scope)."""
        cache = self._assignment_cache
        if function not in cache:
            table: dict[str, list[Assignment]] = {}
            for node in walk_local(self._scope_body(function)):
                if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        for sub in ast.walk(target):
                            if isinstance(sub, ast.Name):
                                table.setdefault(sub.id, []).append(node)
            cache[function] = table
        return cache[function]

    def _definitions(self, function: str, name: str, before: int) -> list[Assignment]:
        """Statements assigning ``name`` in a scope, latest first, those before ``before`` first."""
        found = list(dict.fromkeys(self._assignments_in(function).get(name, [])))
        earlier = sorted((s for s in found if s.lineno < before), key=lambda s: -s.lineno)
        later = sorted((s for s in found if s.lineno >= before), key=lambda s: -s.lineno)
        return earlier + later

    def _trace_loss(self, step: TrainingStep, root: ast.expr) -> None:
        base = root
        while isinstance(base, ast.Attribute | ast.Subscript):
            base = base.value
        if isinstance(base, ast.Call):
            forward = self._find_forward(base, step.function, 0)
            if forward is not None:
                step.forward, step.forward_function = forward
            return
        if not isinstance(base, ast.Name):
            return
        step.loss_name = base.id
        before = step.backward.lineno
        seen: set[int] = set()
        name = base.id
        for _ in range(6):
            definitions = [d for d in self._definitions(step.function, name, before) if id(d) not in seen]
            if not definitions:
                return
            statement = definitions[0]
            seen.add(id(statement))
            step.loss_statements.append(statement)
            value = statement.value
            if value is None:
                return
            forward = self._find_forward(value, step.function, 0)
            if forward is not None:
                step.forward, step.forward_function = forward
                return
            before = statement.lineno
            if isinstance(statement, ast.AugAssign):
                continue
            # ``loss = loss / n``: keep following the same name; else give up on names.
            if not any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(value)):
                return

    def _is_model_call(self, call: ast.Call, function: str) -> bool:
        func = call.func
        module = self.module
        if isinstance(func, ast.Name):
            name = func.id
            if name in _BUILTINS or name in module.imports.aliases or name in module.functions \
                    or name in module.classes or _is_loss_like(name):
                return False
            return not name[:1].isupper()  # ``Model(...)`` builds a model, it does not run one
        if isinstance(func, ast.Attribute):
            spelled = dotted(func)
            if spelled is None or _is_loss_like(spelled):
                return False
            if func.attr in _TENSOR_METHODS:
                return False
            root = spelled.split(".", 1)[0]
            if root in module.imports.aliases:
                return False
            if module.local_callee(call, function) is not None:
                return False
            attr = func.attr.lower()
            return any(h in attr for h in _MODEL_ATTR_HINTS) or \
                any(h in (dotted(func.value) or "").lower() for h in ("model", "net"))
        return False

    def _find_forward(self, expr: ast.expr, function: str,
                      depth: int) -> tuple[ast.Call, str] | None:
        """The model call an expression's value comes from, following names and local helpers."""
        if depth > 5:
            return None
        calls = [n for n in ast.walk(expr) if isinstance(n, ast.Call)]
        for call in calls:
            if self._is_model_call(call, function):
                return call, function
        for call in calls:
            callee = self.module.local_callee(call, function)
            if callee is not None and callee != function:
                fn = self.module.functions[callee]
                for node in walk_local(fn.body):
                    if isinstance(node, ast.Return) and node.value is not None:
                        found = self._find_forward(node.value, callee, depth + 1)
                        if found is not None:
                            return found
        # Follow the names the expression reads (``F.cross_entropy(logits, y)`` → ``logits``).
        names = [n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                 and n.id not in self.module.imports.aliases]
        statement = next((a for a in self.module.ancestors(expr) if isinstance(a, ast.stmt)), None)
        before = statement.lineno if statement is not None else expr.lineno
        for name in dict.fromkeys(names):
            for definition in self._definitions(function, name, before)[:1]:
                if definition.lineno >= before or definition.value is None:
                    continue
                found = self._find_forward(definition.value, function, depth + 1)
                if found is not None:
                    return found
        return None

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


def _loss_root(expr: ast.expr) -> ast.expr:
    """``scaler.scale(loss / n).mean()`` → ``loss``."""
    for _ in range(8):
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            func = expr.func
            if func.attr == "scale" and expr.args:
                expr = expr.args[0]
                continue
            if func.attr in ("mean", "sum", "float", "double", "squeeze", "to"):
                expr = func.value
                continue
        if isinstance(expr, ast.BinOp):
            expr = expr.right if isinstance(expr.left, ast.Constant) else expr.left
            continue
        if isinstance(expr, ast.UnaryOp):
            expr = expr.operand
            continue
        break
    return expr


# -- what a fix needs to know ------------------------------------------------------------


def torch_alias(module: ModuleFacts) -> str | None:
    """The local name bound to the ``torch`` package, if any (``torch``, ``th``)."""
    if module.imports.aliases.get("torch") == "torch":
        return "torch"
    for local, target in module.imports.aliases.items():
        if target == "torch":
            return local
    return None


def device_type_code(facts: PrecisionFacts, function: str, forward: ast.Call | None,
                     torch_name: str) -> str:
    """Source text for ``device_type=`` in a function: the script's own device, as a string."""
    module = facts.module
    scope = facts.names_in_scope(function)
    if "device_type" in scope:
        return "device_type"

    def is_torch_device(value: ast.expr | None) -> bool:
        if isinstance(value, ast.Call):
            return module.call_name(value) == "torch.device"
        return value is not None and module.qualname(value) == "torch.device"

    for name in ("device", "dev"):
        if name in scope:
            if all(is_torch_device(v) for v in scope[name]):
                return f"{name}.type"
            return f"{torch_name}.device({name}).type"
    fn = facts.scope_of(function)
    body = fn.body if fn is not None else module.tree.body
    for node in walk_local(body):
        if isinstance(node, ast.Attribute) and dotted(node) == "self.device":
            return f"{torch_name}.device(self.device).type"
    for node in walk_local(body):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "cuda":
                return '"cuda"'
            if node.func.attr == "to" and len(node.args) == 1 and not node.keywords:
                target = dotted(node.args[0])
                if target is not None and low_dtype_of(module, node.args[0]) is None \
                        and "dtype" not in target.lower():
                    return f"{torch_name}.device({target}).type"
    if forward is not None:
        for arg in forward.args:
            if isinstance(arg, ast.Name):
                return f"{arg.id}.device.type"
    return '"cuda"'


def related_paths(project: Project, path: str) -> set[str]:
    """Files a file imports or is imported by, transitively (not mere siblings)."""
    graph, reverse = project.import_graph, project.importers
    found = {path}
    for edges in (graph, reverse):
        stack = [path]
        seen = {path}
        while stack:
            current = stack.pop()
            for nxt in edges.get(current, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        found |= seen
    return found
