"""The typed payloads of the precision fixes, built from facts the rules proved:
how each deprecated AMP reference is renamed (TA302) and how a GradScaler that
bfloat16 does not need is taken out (TA306)."""

from __future__ import annotations

import ast

from trainaudit.model.module import ModuleFacts
from trainaudit.model.precision.api import (
    DEPRECATED_AMP,
    DEPRECATED_SUBMODULES,
    DeprecatedAmpUse,
    compatibility_fallback,
    deprecated_amp_uses,
    dotted,
)
from trainaudit.model.precision.facts import PrecisionFacts
from trainaudit.model.precision.scope import torch_alias
from trainaudit.payloads import AmpRename, ScalerRemoval


def amp_renames(module: ModuleFacts) -> list[tuple[DeprecatedAmpUse, AmpRename]]:
    """Each deprecated AMP reference of a file with what its rename needs."""
    uses = deprecated_amp_uses(module)
    alias = torch_alias(module)
    aliases = module.imports.aliases
    local_uses = _local_uses(module, uses)
    imports = _movable_imports(module)
    found: list[tuple[DeprecatedAmpUse, AmpRename]] = []
    for use in uses:
        bound_to_torch = aliases.get(use.local_name) == "torch"
        positions = local_uses.get(use.local_name, ()) if use.spelling in ("module", "name") else ()
        found.append((use, AmpRename(
            kind=use.api.kind, device=use.api.device, form=use.form, spelling=use.spelling,
            qualname=use.qualname, replacement=use.replacement, local_name=use.local_name,
            torch_base=use.local_name if bound_to_torch else alias or "torch",
            needs_torch_import=use.spelling == "qualified" and not bound_to_torch and alias is None,
            movable_imports=imports.get(use.local_name, ()) if positions else (),
            local_uses=positions)))
    return found


def _local_uses(module: ModuleFacts, uses: list[DeprecatedAmpUse]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Local names (``autocast``, ``amp``) read only by deprecated uses: their positions."""
    by_local: dict[str, list[DeprecatedAmpUse]] = {}
    for use in uses:
        if use.spelling in ("module", "name"):
            by_local.setdefault(use.local_name, []).append(use)
    found: dict[str, tuple[tuple[int, int], ...]] = {}
    for local, local_uses in by_local.items():
        roots = {id(_root(u.node)) for u in local_uses}
        references = [n for n in ast.walk(module.tree) if isinstance(n, ast.Name) and n.id == local
                      and isinstance(n.ctx, ast.Load)]
        if all(id(n) in roots for n in references):
            found[local] = tuple((module.span(u.node).line, module.span(u.node).column)
                                 for u in local_uses)
    return found


def _root(node: ast.expr) -> ast.expr:
    current: ast.expr = node.func if isinstance(node, ast.Call) else node
    while isinstance(current, ast.Attribute):
        current = current.value
    return current


def _movable_imports(module: ModuleFacts) -> dict[str, tuple[int, ...]]:
    """Local name → lines of the deprecated imports binding it, outside version-guarded
    fallbacks (``except ImportError: from torch.cuda.amp import ...`` stays as it is)."""
    movable_names = {name.rsplit(".", 1)[-1] for name in DEPRECATED_AMP}
    found: dict[str, list[int]] = {}
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or compatibility_fallback(module, node):
            continue
        for alias in node.names:
            if isinstance(node, ast.ImportFrom):
                source = node.module or ""
                movable = not node.level and (
                    (source in DEPRECATED_SUBMODULES and alias.name in movable_names)
                    or (source in ("torch.cuda", "torch.cpu") and alias.name == "amp"))
            else:
                movable = alias.name in DEPRECATED_SUBMODULES and alias.asname is not None
            if movable:
                found.setdefault(alias.asname or alias.name, []).append(node.lineno)
    return {local: tuple(lines) for local, lines in found.items()}


def scaler_removal(facts: PrecisionFacts, spelled: str) -> ScalerRemoval:
    """How to take a GradScaler out: its statements, ``scale`` and ``step`` calls; not
    removable when it has any other use."""
    module = facts.module
    statements: list[ast.stmt] = []
    scales: list[ast.Call] = []
    steps: list[ast.Call] = []
    handled: set[int] = set()
    disabled = ScalerRemoval(spelled, removable=False)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and dotted(node.targets[0]) == spelled:
            if not isinstance(node.value, ast.Call) or \
                    not (module.call_name(node.value) or "").endswith("GradScaler"):
                return disabled
            statements.append(node)
            handled.add(id(node.targets[0]))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and dotted(node.func.value) == spelled:
            method = node.func.attr
            parent = module.parents.get(node)
            if method in ("unscale_", "update") and isinstance(parent, ast.Expr):
                statements.append(parent)
            elif method == "scale" and len(node.args) == 1 and not node.keywords:
                scales.append(node)
            elif method == "step" and len(node.args) == 1 and not node.keywords:
                steps.append(node)
            else:
                return disabled
            handled.add(id(node.func.value))
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Name | ast.Attribute) and dotted(node) == spelled \
                and id(node) not in handled:
            parent = module.parents.get(node)
            if not (isinstance(parent, ast.Attribute) and dotted(parent) and id(parent.value) in handled):
                return disabled
    return ScalerRemoval(spelled, removable=True,
                         statements=tuple(sorted(s.lineno for s in statements)),
                         scales=tuple(module.span(c) for c in scales),
                         steps=tuple(module.span(c) for c in steps))
