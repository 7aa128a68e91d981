"""Fixes of the mixed-precision rules (TA301–TA306).

- TA302 (safe): ``torch.cuda.amp.autocast(args)`` → ``torch.autocast("cuda", args)``,
  ``GradScaler(args)`` → ``torch.amp.GradScaler("cuda", args)``, ``custom_fwd`` →
  ``torch.amp.custom_fwd(device_type="cuda")``; positional arguments become
  keywords where the new signature's positions differ; imports from
  ``torch.cuda.amp`` / ``torch.cuda`` move to ``torch.amp`` / ``torch``, keeping aliases.
- TA301 (feature): in ``autocast.py``.
- TA303: ``scaler.unscale_(optimizer)`` before the clip.
- TA304: route backward / step through the scaler, add ``scaler.update()``.
- TA305: add a ``torch.amp.GradScaler`` before the training loop and use it.
- TA306 (safe): remove a scaler that bfloat16 does not need.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located, code_of
from trainaudit.fixes.toolkit import (
    Edits,
    append_args,
    arg_with_comma,
    as_receiver,
    call_at,
    ensure_import,
    keyword_arg,
    replace_with,
    simple_statement,
    statement,
    statement_at_line,
    string,
    unparenthesized,
)
from trainaudit.model.precision import (
    DEPRECATED_AMP,
    DEPRECATED_MODULES,
    NEW_PARAMETERS,
    OLD_PARAMETERS,
)
from trainaudit.payloads import (
    AmpRename,
    ScalerInsertion,
    ScalerRemoval,
    ScalerRepair,
    UnscaleBeforeClip,
    payload_of,
)

# -- TA302: deprecated AMP API ----------------------------------------------------------------

NEW_MODULE = {"torch.cuda.amp": "torch.amp", "torch.cpu.amp": "torch.amp",
              "torch.cuda.amp.autocast_mode": "torch.amp", "torch.cpu.amp.autocast_mode": "torch.amp",
              "torch.cuda.amp.grad_scaler": "torch.amp", "torch.cpu.amp.grad_scaler": "torch.amp"}


def _new_arguments(use: AmpRename, call: cst.Call) -> list[cst.Arg]:
    kind = use.kind
    old, new = OLD_PARAMETERS[kind], NEW_PARAMETERS[kind]
    args: list[cst.Arg] = []
    keep_positions = True
    index = 0
    for arg in call.args:
        if arg.keyword is None and not arg.star:
            if keep_positions and index < len(new) and old[index] == new[index]:
                args.append(arg)
            else:
                keep_positions = False
                args.append(arg.with_changes(keyword=cst.Name(old[index]), equal=cst.AssignEqual(
                    whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))))
            index += 1
        else:
            args.append(arg)
    if kind in ("autocast", "GradScaler"):
        device = cst.Arg(string(use.device))
        return [arg_with_comma(device), *args] if args else [device]
    device_kw = keyword_arg("device_type", string(use.device))
    positional = [a for a in args if a.keyword is None and not a.star]
    rest = [a for a in args if a not in positional]
    out = [arg_with_comma(a) for a in positional] + [device_kw]
    if rest:
        out = [*out[:-1], arg_with_comma(out[-1]), *rest]
    return out


def _new_function(use: AmpRename, func: cst.BaseExpression) -> cst.BaseExpression:
    if use.spelling != "qualified":
        return func  # the import is rewritten instead; the local spelling stays
    path = {"autocast": "autocast", "GradScaler": "amp.GradScaler",
            "custom_fwd": "amp.custom_fwd", "custom_bwd": "amp.custom_bwd"}[use.kind]
    return cst.parse_expression(f"{use.torch_base}.{path}")


def _moved_import(updated_node: cst.SimpleStatementLine, moved: set[str]
                  ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement]:
    """Move the names of ``moved`` (every use fixed) from ``torch.cuda.amp`` to ``torch.amp``."""
    if len(updated_node.body) != 1:
        return updated_node
    node = updated_node.body[0]
    if isinstance(node, cst.ImportFrom) and not isinstance(node.names, cst.ImportStar) \
            and node.module is not None and not node.relative:
        module = code_of(node.module)
        target = NEW_MODULE.get(module)
        if target is None and module in ("torch.cuda", "torch.cpu"):
            target = "torch"
            movable = {"amp"}
        else:
            movable = {name.rsplit(".", 1)[-1] for name in DEPRECATED_AMP}
        if target is None:
            return updated_node
        moving: list[cst.ImportAlias] = []
        staying: list[cst.ImportAlias] = []
        for alias in node.names:
            name = code_of(alias.name)
            local = alias.asname.name.value if alias.asname and isinstance(
                alias.asname.name, cst.Name) else name
            (moving if name in movable and local in moved else staying).append(alias)
        if not moving:
            return updated_node
        new_module = cst.parse_expression(target)
        assert isinstance(new_module, cst.Attribute | cst.Name)
        if not staying:
            return updated_node.with_changes(body=[node.with_changes(module=new_module)])
        moved_line = cst.SimpleStatementLine([cst.ImportFrom(
            module=new_module, names=[_alias_comma(a, i < len(moving) - 1) for i, a in enumerate(moving)])])
        kept = node.with_changes(names=[_alias_comma(a, i < len(staying) - 1)
                                        for i, a in enumerate(staying)], lpar=None, rpar=None)
        return cst.FlattenSentinel([updated_node.with_changes(body=[kept]), moved_line])
    if isinstance(node, cst.Import):
        names = []
        changed = False
        for alias in node.names:
            name = code_of(alias.name)
            as_name = alias.asname.name.value if alias.asname and isinstance(
                alias.asname.name, cst.Name) else None
            if name in NEW_MODULE and as_name is not None and as_name in moved:
                alias = alias.with_changes(name=cst.parse_expression(NEW_MODULE[name]))
                changed = True
            names.append(alias)
        if changed:
            return updated_node.with_changes(body=[node.with_changes(names=names)])
    return updated_node


def _alias_comma(alias: cst.ImportAlias, comma: bool) -> cst.ImportAlias:
    if comma:
        return alias.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    return alias.with_changes(comma=cst.MaybeSentinel.DEFAULT)


@fixer("TA302")
def fix_deprecated_amp(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    renames = [(f, p) for f in findings if f.fix is not None and (p := payload_of(f, AmpRename))]
    fixed = {(f.line, f.column) for f, _ in renames}
    notes: list[str] = []
    for finding, use in renames:
        span = finding.span
        if use.form == "call":
            call = call_at(located, span)
            if call is None:
                continue

            def rewrite(updated: cst.Call, use: AmpRename = use) -> cst.Call:
                return updated.with_changes(func=_new_function(use, updated.func),
                                            args=_new_arguments(use, updated))

            edits.replace(call, rewrite)
        else:
            targets = [n for n in located.at(span.line, span.column, (cst.Name, cst.Attribute))
                       if located.range(n).end.column == span.end_column - 1]
            if not targets:
                continue
            if use.form == "decorator":
                def decorate(updated: cst.BaseExpression, use: AmpRename = use) -> cst.Call:
                    return cst.Call(func=_new_function(use, updated),
                                    args=[keyword_arg("device_type", string(use.device))])

                edits.replace(targets[0], decorate)
            elif use.spelling == "qualified":
                edits.replace(targets[0], replace_with(cst.parse_expression(
                    f"{use.torch_base}.amp.GradScaler")))
        notes.append(f"line {span.line}: {use.qualname} -> {use.replacement}")
    if not notes:
        return FixResult(source)
    # A local name moves to torch.amp once every use of it is fixed (a suppressed one keeps it).
    moved = {use.local_name for _, use in renames if use.local_uses and set(use.local_uses) <= fixed}
    for line in sorted({line for _, use in renames if use.local_name in moved
                        for line in use.movable_imports}):
        stmt = statement_at_line(located, line)
        if isinstance(stmt, cst.SimpleStatementLine):
            edits.replace(stmt, lambda node: _moved_import(node, moved))
    module = edits.apply(located.module)
    if any(use.needs_torch_import for _, use in renames):
        module = ensure_import(module, "import torch", "torch")
    module = _drop_plain_amp_imports(module)
    return FixResult(module.code, notes)


def _drop_plain_amp_imports(module: cst.Module) -> cst.Module:
    """``import torch.cuda.amp`` once nothing reads ``torch.cuda.amp``: ``import torch``, or gone."""
    code = module.code
    if "cuda.amp" in code.replace("import torch.cuda.amp", "") or \
            "cpu.amp" in code.replace("import torch.cpu.amp", ""):
        return module
    tree = ast.parse(code)
    plain_torch = any(isinstance(n, ast.Import) and any(a.name == "torch" and a.asname is None for a in n.names)
                      for n in ast.walk(tree))

    class Drop(cst.CSTTransformer):
        def __init__(self) -> None:
            super().__init__()
            self.have_torch = plain_torch

        def leave_Import(self, original_node: cst.Import, updated_node: cst.Import
                         ) -> cst.Import | cst.RemovalSentinel:
            names = []
            for alias in updated_node.names:
                name = code_of(alias.name)
                if name in DEPRECATED_MODULES and alias.asname is None:
                    if self.have_torch:
                        continue
                    self.have_torch = True
                    alias = alias.with_changes(name=cst.Name("torch"))
                names.append(alias)
            if not names:
                return cst.RemovalSentinel.REMOVE
            names[-1] = names[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            return updated_node.with_changes(names=names)

    return module.visit(Drop())


# -- TA303: unscale before clipping ---------------------------------------------------------


@fixer("TA303")
def fix_clip_before_unscale(source: str, findings: Sequence[Finding],
                            options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        data = payload_of(finding, UnscaleBeforeClip)
        call = call_at(located, data.anchor) if data is not None else None
        stmt = simple_statement(located, call) if call is not None else None
        if data is None or stmt is None or stmt in edits.before:
            continue
        if data.move is not None:
            moved = call_at(located, data.move)
            moved_stmt = simple_statement(located, moved) if moved is not None else None
            if moved_stmt is None or moved_stmt in edits.remove:
                continue
            edits.remove.add(moved_stmt)  # clip, then unscale_: the two swap
            edits.insert_before(stmt, moved_stmt)
            notes.append(f"line {finding.line}: the `unscale_` after the clip moved before it")
            continue
        edits.insert_before(stmt, statement(f"{data.scaler}.unscale_({data.optimizer})"))
        notes.append(f"line {finding.line}: {data.scaler}.unscale_({data.optimizer}) before clipping")
    if edits.empty:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


# -- TA304: route backward and step through the scaler -------------------------------------


def _scaled_backward(call: cst.Call, scaler: str) -> cst.Call:
    """``X.backward(...)`` → ``scaler.scale(X).backward(...)``."""
    func = call.func
    assert isinstance(func, cst.Attribute)
    scale = cst.Call(func=cst.parse_expression(f"{scaler}.scale"),
                     args=[cst.Arg(unparenthesized(func.value))])
    return call.with_changes(func=func.with_changes(value=scale))


def _scaler_step(call: cst.Call, scaler: str) -> cst.Call:
    """``optimizer.step()`` → ``scaler.step(optimizer)``."""
    func = call.func
    assert isinstance(func, cst.Attribute)
    return cst.Call(func=cst.parse_expression(f"{scaler}.step"), args=[cst.Arg(func.value)])


@fixer("TA304")
def fix_grad_scaler_bypassed(source: str, findings: Sequence[Finding],
                             options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        data = payload_of(finding, ScalerRepair)
        call = call_at(located, finding.span) if data is not None else None
        if data is None or call is None or not isinstance(call.func, cst.Attribute):
            continue
        scaler = data.scaler
        if data.kind == "backward":
            edits.replace(call, partial(_scaled_backward, scaler=scaler))
            notes.append(f"line {finding.line}: backward through {scaler}.scale(...)")
        elif data.kind == "step":
            edits.replace(call, partial(_scaler_step, scaler=scaler))
            notes.append(f"line {finding.line}: optimizer stepped through {scaler}.step(...)")
        elif data.kind == "update":
            stmt = simple_statement(located, call)
            if stmt is not None:
                edits.insert_after(stmt, statement(f"{scaler}.update()"))
                notes.append(f"line {finding.line}: {scaler}.update() after the step")
    if edits.empty:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


# -- TA305: add a GradScaler ------------------------------------------------------------------


@fixer("TA305")
def fix_fp16_without_scaler(source: str, findings: Sequence[Finding],
                            options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings[:1]:  # one scaler per file and round; the loop is shared
        data = payload_of(finding, ScalerInsertion)
        loop = statement_at_line(located, data.loop_line) if data is not None else None
        if data is None or loop is None:
            continue
        scaler, torch_name, device = data.scaler, data.torch_name, data.device
        if device.startswith(("'", '"')):
            make = f"{scaler} = {torch_name}.amp.GradScaler({device})"
        else:
            make = f'{scaler} = {torch_name}.amp.GradScaler({device}, enabled={device} == "cuda")'
        edits.insert_before(loop, statement(make))
        for where in data.backwards:
            call = call_at(located, where)
            if call is not None:
                edits.replace(call, partial(_scaled_backward, scaler=scaler))
        for where in data.clips:
            call = call_at(located, where)
            stmt = simple_statement(located, call) if call is not None else None
            if stmt is None:
                continue
            after = [s for s in data.steps if s[0].line > where.line] or data.steps
            edits.insert_before(stmt, statement(f"{scaler}.unscale_({after[0][1]})"))
        for where, _ in data.steps:
            call = call_at(located, where)
            stmt = simple_statement(located, call) if call is not None else None
            if call is None or stmt is None:
                continue
            edits.replace(call, partial(_scaler_step, scaler=scaler))
            edits.insert_after(stmt, statement(f"{scaler}.update()"))
        notes.append(f"line {finding.line}: float16 training now uses {make.split(' = ', 1)[1]}")
    if edits.empty:
        return FixResult(source)
    return FixResult(edits.apply(located.module).code, notes)


# -- TA306: drop a scaler bfloat16 does not need ---------------------------------------------


@fixer("TA306")
def fix_grad_scaler_with_bf16(source: str, findings: Sequence[Finding],
                              options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        plan = payload_of(finding, ScalerRemoval)
        if plan is None:
            continue
        if not plan.removable:
            call = call_at(located, finding.span)
            if call is None:
                continue
            edits.replace(call, lambda c: append_args(c, [keyword_arg("enabled", cst.Name("False"))]))
            notes.append(f"line {finding.line}: {plan.scaler} disabled (enabled=False)")
            continue
        for line in plan.statements:
            stmt = statement_at_line(located, line)
            if stmt is not None:
                edits.remove.add(stmt)
        for where in plan.scales:
            if (call := call_at(located, where)) is not None:
                edits.replace(call, _unwrap_scale)
        for where in plan.steps:
            if (call := call_at(located, where)) is not None:
                edits.replace(call, lambda c: cst.Call(
                    func=cst.Attribute(value=as_receiver(c.args[0].value), attr=cst.Name("step"))))
        notes.append(f"line {finding.line}: GradScaler {plan.scaler} removed (bfloat16 needs no scaling)")
    if edits.empty:
        return FixResult(source)
    module = edits.apply(located.module)
    return FixResult(_drop_unused_imports(module, {"GradScaler"}).code, notes)


def _unwrap_scale(call: cst.Call) -> cst.BaseExpression:
    """``scaler.scale(x)`` → ``x``, parenthesised when it is the receiver of ``.backward()``."""
    value = call.args[0].value
    if isinstance(value, cst.Name | cst.Attribute | cst.Call | cst.Subscript):
        return value.with_changes(lpar=call.lpar, rpar=call.rpar) if call.lpar else value
    return as_receiver(unparenthesized(value))


def _drop_unused_imports(module: cst.Module, names: set[str]) -> cst.Module:
    """Remove imported ``names`` the file no longer reads."""
    tree = ast.parse(module.code)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}

    class Drop(cst.CSTTransformer):
        def leave_ImportFrom(self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom
                             ) -> cst.ImportFrom | cst.RemovalSentinel:
            if isinstance(updated_node.names, cst.ImportStar):
                return updated_node
            keep = []
            for alias in updated_node.names:
                name = code_of(alias.name)
                local = alias.asname.name.value if alias.asname and isinstance(
                    alias.asname.name, cst.Name) else name
                if name in names and local not in used:
                    continue
                keep.append(alias)
            if not keep:
                return cst.RemovalSentinel.REMOVE
            if len(keep) == len(updated_node.names):
                return updated_node
            return updated_node.with_changes(
                names=[_alias_comma(a, i < len(keep) - 1) for i, a in enumerate(keep)])

    return module.visit(Drop())
