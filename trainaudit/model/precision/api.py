"""The AMP API as the precision rules see it: deprecated entry points, autocast
callables, dtype spellings, and each reference to ``torch.cuda.amp.*`` /
``torch.cpu.amp.*`` in a file (``DeprecatedAmpUse``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from trainaudit.model.module import ModuleFacts

# -- the AMP API -------------------------------------------------------------------------


@dataclass(frozen=True)
class AmpApi:
    """One deprecated AMP entry point and its device."""

    kind: str  # autocast | GradScaler | custom_fwd | custom_bwd
    device: str  # cuda | cpu


DEPRECATED_MODULES = {"torch.cuda.amp": "cuda", "torch.cpu.amp": "cpu"}
# Every deprecated module an AMP name can be imported from.
DEPRECATED_SUBMODULES = frozenset(f"{base}{tail}" for base in DEPRECATED_MODULES
                                  for tail in ("", ".autocast_mode", ".grad_scaler"))
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


def nodes_by_type(module: ModuleFacts) -> dict[type, list[ast.AST]]:
    """Every node of a file grouped by its type, in walk order (``ModuleFacts.nodes_by_type``)."""
    return module.nodes_by_type


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


# The torch release that introduced each new spelling a fix writes (``torch.autocast``,
# ``torch.amp.GradScaler``, ``torch.amp.custom_fwd(device_type=...)``).
AMP_SINCE: dict[str, tuple[int, int]] = {"autocast": (1, 10), "GradScaler": (2, 3),
                                         "custom_fwd": (2, 4), "custom_bwd": (2, 4)}


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
    def replacement_needs(self) -> tuple[int, int]:
        """The torch release that introduced the replacement: ``torch.autocast`` 1.10 (an
        import moved to ``torch.amp``: 2.0, where ``torch.amp.autocast`` is certain),
        ``torch.amp.GradScaler`` 2.3, ``torch.amp.custom_fwd(device_type=...)`` 2.4."""
        if self.api.kind == "autocast" and self.spelling != "qualified":
            return (2, 0)
        return AMP_SINCE[self.api.kind]

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
    guarded = _also_bound_to_new_api(module)
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
        if compatibility_fallback(module, node) or root.id in guarded:
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


def _also_bound_to_new_api(module: ModuleFacts) -> set[str]:
    """Local names some import binds to a non-deprecated module (``from torch.amp import
    GradScaler`` beside the ``torch.cuda.amp`` fallback): which one a use reads depends on
    the torch version, so the use is not deprecated."""
    bound: set[str] = set()
    for node in nodes_by_type(module).get(ast.ImportFrom, []):
        assert isinstance(node, ast.ImportFrom)
        source = node.module or ""
        if node.level or source in DEPRECATED_SUBMODULES:
            continue
        bound.update(alias.asname or alias.name for alias in node.names
                     if f"{source}.{alias.name}" not in DEPRECATED_SUBMODULES)
    return bound


def compatibility_fallback(module: ModuleFacts, node: ast.AST) -> bool:
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


