"""Fixes of the mixed-precision rules (TA301–TA306).

- TA302 (safe): ``torch.cuda.amp.autocast(args)`` → ``torch.autocast("cuda", args)``,
  ``GradScaler(args)`` → ``torch.amp.GradScaler("cuda", args)``, ``custom_fwd`` →
  ``torch.amp.custom_fwd(device_type="cuda")``; positional arguments become
  keywords where the new signature's positions differ; imports from
  ``torch.cuda.amp`` / ``torch.cuda`` move to ``torch.amp`` / ``torch``, keeping aliases.
- TA301 (feature): wrap the forward and loss of the training step in
  ``torch.autocast(device_type=..., dtype=torch.bfloat16)``.
- TA303: ``scaler.unscale_(optimizer)`` before the clip.
- TA304: route backward / step through the scaler, add ``scaler.update()``.
- TA305: add a ``torch.amp.GradScaler`` before the training loop and use it.
- TA306 (safe): remove a scaler that bfloat16 does not need.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import libcst as cst

from trainaudit.diagnostics import Finding
from trainaudit.fixes import FixResult, fixer
from trainaudit.fixes.cst import Located, fitted_call, line_length
from trainaudit.model.module import ModuleFacts
from trainaudit.model.precision import (
    DEPRECATED_AMP,
    DEPRECATED_MODULES,
    NEW_PARAMETERS,
    OLD_PARAMETERS,
    DeprecatedAmpUse,
    PrecisionFacts,
    deprecated_amp_uses,
    dotted,
    torch_alias,
)

# -- edit helpers (shared with the checkpointing fixes) -------------------------------------

Rewrite = Callable[[Any], Any]


def replace_with(node: cst.CSTNode) -> Rewrite:
    """A rewrite that puts ``node`` in place of whatever is there."""
    return lambda _: node


def rewrite_with(function: Callable[[Any, str], Any], argument: str) -> Rewrite:
    """A rewrite that calls ``function(updated_node, argument)``."""
    return lambda updated: function(updated, argument)


class Edits(cst.CSTTransformer):
    """Replacements keyed by original node, and statements to insert before/after others."""

    def __init__(self) -> None:
        super().__init__()
        self.replace: dict[int, Rewrite] = {}
        self.before: dict[int, list[cst.BaseStatement]] = {}
        self.after: dict[int, list[cst.BaseStatement]] = {}
        self.remove: set[int] = set()

    def on_leave(self, original_node: Any, updated_node: Any) -> Any:
        key = id(original_node)
        if key in self.remove:
            return cst.RemovalSentinel.REMOVE
        result = updated_node
        if key in self.replace:
            result = self.replace[key](updated_node)
        if isinstance(result, cst.IndentedBlock) and not result.body:
            result = result.with_changes(body=[cst.SimpleStatementLine([cst.Pass()])])
        if key in self.before or key in self.after:
            before = self.before.get(key, [])
            if before and isinstance(result, cst.SimpleStatementLine | cst.BaseCompoundStatement):
                # Comments above the statement stay above everything inserted there.
                first = before[0].with_changes(leading_lines=result.leading_lines)
                before = [first, *before[1:]]
                result = result.with_changes(leading_lines=())
            return cst.FlattenSentinel([*before, result, *self.after.get(key, [])])
        return result

    @property
    def empty(self) -> bool:
        return not (self.replace or self.before or self.after or self.remove)


def parse_facts(source: str) -> ModuleFacts:
    return ModuleFacts("fix.py", "", source, ast.parse(source))


def statement(code: str) -> cst.SimpleStatementLine | cst.BaseCompoundStatement:
    return cst.parse_statement(code if code.endswith("\n") else code + "\n")


def call_by_span(located: Located, where: Sequence[int]) -> cst.Call | None:
    """The CST call with exactly this 1-based (line, column, end_line, end_column) span."""
    line, column, end_line, end_column = where[:4]
    for candidate in located.at(line, column, cst.Call):
        pos = located.range(candidate)
        if pos.end.line == end_line and pos.end.column == end_column - 1 and isinstance(candidate, cst.Call):
            return candidate
    return None


def matching_call(located: Located, facts: ModuleFacts, node: ast.Call) -> cst.Call | None:
    """The CST call with the same start and end as an ``ast`` call."""
    span = facts.span(node)
    return call_by_span(located, (span.line, span.column, span.end_line, span.end_column))


def simple_statement(located: Located, node: cst.CSTNode) -> cst.SimpleStatementLine | None:
    stmt = located.statement_of(node)
    return stmt if isinstance(stmt, cst.SimpleStatementLine) else None


def statement_at_line(located: Located, line: int) -> cst.BaseStatement | None:
    """The outermost statement that starts on a line."""
    best: cst.BaseStatement | None = None
    for node, pos in located.positions.items():
        if not (isinstance(node, cst.SimpleStatementLine | cst.BaseCompoundStatement)
                and pos.start.line == line):
            continue
        if best is None or located.range(best).end.line < pos.end.line or \
                (located.range(best).end.line == pos.end.line and _contains(node, best)):
            best = node
    return best


def _contains(outer: cst.CSTNode, inner: cst.CSTNode) -> bool:
    return any(child is inner or _contains(child, inner) for child in outer.children)


def ensure_import(module: cst.Module, code: str, binds: str, bound: set[str]) -> cst.Module:
    """Add an import after the file's top imports (after its torch imports, where it has some)."""
    if binds in bound:
        return module
    body = list(module.body)
    index = 0
    after_torch = None
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and all(
                isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body):
            index = i + 1
            if _imports_torch(stmt):
                after_torch = i + 1
        elif i == 0 and isinstance(stmt, cst.SimpleStatementLine) and isinstance(
                stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, cst.SimpleString):
            index = 1  # after the docstring
        elif isinstance(stmt, cst.If | cst.Try) and index:
            continue  # ``try: import x`` blocks inside the import section
        elif index or not isinstance(stmt, cst.SimpleStatementLine):
            break
    body.insert(after_torch if after_torch is not None else index, statement(code))
    return module.with_changes(body=body)


def _imports_torch(stmt: cst.SimpleStatementLine) -> bool:
    for small in stmt.body:
        if isinstance(small, cst.Import):
            names = [cst.Module([]).code_for_node(a.name) for a in small.names]
        elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative:
            names = [cst.Module([]).code_for_node(small.module)]
        else:
            continue
        if any(n == "torch" or n.startswith("torch.") for n in names):
            return True
    return False


def bound_names(source: str) -> set[str]:
    """Every name a file binds anywhere (imports, assignments, defs, parameters)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return names


def string(value: str) -> cst.SimpleString:
    return cst.SimpleString(f'"{value}"')


def arg_with_comma(arg: cst.Arg) -> cst.Arg:
    if isinstance(arg.comma, cst.Comma):
        return arg
    return arg.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))


def keyword_arg(name: str, value: cst.BaseExpression) -> cst.Arg:
    return cst.Arg(value=value, keyword=cst.Name(name),
                   equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                         whitespace_after=cst.SimpleWhitespace("")))


def append_args(call: cst.Call, extra: Sequence[cst.Arg]) -> cst.Call:
    """Add arguments at the end, keeping a trailing comma's layout."""
    args = list(call.args)
    if not args:
        return call.with_changes(args=list(extra))
    last = args[-1]
    trailing = last.comma if isinstance(last.comma, cst.Comma) else None
    args[-1] = arg_with_comma(last.with_changes(comma=cst.MaybeSentinel.DEFAULT))
    if trailing is not None and "\n" in cst.Module([]).code_for_node(trailing):
        args[-1] = last  # a multi-line call: put each new argument on its own line
        new = [a.with_changes(comma=trailing) for a in extra]
        return call.with_changes(args=[*args, *new])
    new = [arg_with_comma(a) for a in extra[:-1]] + [extra[-1]]
    return call.with_changes(args=[*args, *new])


def unparenthesized(expr: cst.BaseExpression) -> cst.BaseExpression:
    if getattr(expr, "lpar", None):
        return expr.with_changes(lpar=[], rpar=[])
    return expr


def as_receiver(expr: cst.BaseExpression) -> cst.BaseExpression:
    """An expression fit to have ``.attr`` after it (parenthesised when needed)."""
    if isinstance(expr, cst.Name | cst.Attribute | cst.Call | cst.Subscript) or getattr(expr, "lpar", None):
        return expr
    return expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


# -- TA302: deprecated AMP API ----------------------------------------------------------------

NEW_MODULE = {"torch.cuda.amp": "torch.amp", "torch.cpu.amp": "torch.amp",
              "torch.cuda.amp.autocast_mode": "torch.amp", "torch.cpu.amp.autocast_mode": "torch.amp",
              "torch.cuda.amp.grad_scaler": "torch.amp", "torch.cpu.amp.grad_scaler": "torch.amp"}


def _new_arguments(use: DeprecatedAmpUse, call: cst.Call) -> list[cst.Arg]:
    kind = use.api.kind
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
        device = cst.Arg(string(use.api.device))
        return [arg_with_comma(device), *args] if args else [device]
    device_kw = keyword_arg("device_type", string(use.api.device))
    positional = [a for a in args if a.keyword is None and not a.star]
    rest = [a for a in args if a not in positional]
    out = [arg_with_comma(a) for a in positional] + [device_kw]
    if rest:
        out = [*out[:-1], arg_with_comma(out[-1]), *rest]
    return out


def _new_function(use: DeprecatedAmpUse, func: cst.BaseExpression, base: str) -> cst.BaseExpression:
    if use.spelling != "qualified":
        return func  # the import is rewritten instead; the local spelling stays
    path = {"autocast": "autocast", "GradScaler": "amp.GradScaler",
            "custom_fwd": "amp.custom_fwd", "custom_bwd": "amp.custom_bwd"}[use.api.kind]
    return cst.parse_expression(f"{base}.{path}")


class _ImportRewrite(cst.CSTTransformer):
    """Move names whose every use was fixed from ``torch.cuda.amp`` to ``torch.amp``."""

    def __init__(self, moved: set[str]) -> None:
        super().__init__()
        self.moved = moved  # local names bound by the import

    def leave_SimpleStatementLine(self, original_node: cst.SimpleStatementLine,
                                  updated_node: cst.SimpleStatementLine
                                  ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement]:
        if len(updated_node.body) != 1:
            return updated_node
        node = updated_node.body[0]
        if isinstance(node, cst.ImportFrom) and not isinstance(node.names, cst.ImportStar) \
                and node.module is not None and not node.relative:
            module = cst.Module([]).code_for_node(node.module)
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
                name = cst.Module([]).code_for_node(alias.name)
                local = alias.asname.name.value if alias.asname and isinstance(
                    alias.asname.name, cst.Name) else name
                (moving if name in movable and local in self.moved else staying).append(alias)
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
                name = cst.Module([]).code_for_node(alias.name)
                as_name = alias.asname.name.value if alias.asname and isinstance(
                    alias.asname.name, cst.Name) else None
                if name in NEW_MODULE and as_name is not None and as_name in self.moved:
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


def _movable_locals(facts: ModuleFacts, uses: list[DeprecatedAmpUse], fixed: set[int]) -> set[str]:
    """Local names (``autocast``, ``amp``) whose every reference is a use being fixed."""
    by_local: dict[str, list[DeprecatedAmpUse]] = {}
    for use in uses:
        if use.spelling in ("module", "name"):
            by_local.setdefault(use.local_name, []).append(use)
    movable: set[str] = set()
    for local, local_uses in by_local.items():
        if not all(id(u) in fixed for u in local_uses):
            continue
        roots = {id(_root(u.node)) for u in local_uses}
        references = [n for n in ast.walk(facts.tree) if isinstance(n, ast.Name) and n.id == local
                      and isinstance(n.ctx, ast.Load)]
        if all(id(n) in roots for n in references):
            movable.add(local)
    return movable


def _root(node: ast.expr) -> ast.expr:
    current: ast.expr = node.func if isinstance(node, ast.Call) else node
    while isinstance(current, ast.Attribute):
        current = current.value
    return current


@fixer("TA302")
def fix_deprecated_amp(source: str, findings: Sequence[Finding], options: Mapping[str, Any]) -> FixResult:
    facts = parse_facts(source)
    uses = deprecated_amp_uses(facts)
    wanted = {(f.line, f.column) for f in findings}
    located = Located(source)
    edits = Edits()
    alias = torch_alias(facts)
    base = alias or "torch"
    fixed: set[int] = set()
    notes: list[str] = []
    for use in uses:
        span = facts.span(use.node)
        if (span.line, span.column) not in wanted or not use.fixable:
            continue
        qualified_base = use.local_name if facts.imports.aliases.get(use.local_name) == "torch" else base
        if use.form == "call":
            call = matching_call(located, facts, use.node) if isinstance(use.node, ast.Call) else None
            if call is None:
                continue

            def rewrite(updated: cst.Call, use: DeprecatedAmpUse = use, qb: str = qualified_base) -> cst.Call:
                return updated.with_changes(func=_new_function(use, updated.func, qb),
                                            args=_new_arguments(use, updated))

            edits.replace[id(call)] = rewrite
        else:
            targets = [n for n in located.at(span.line, span.column, (cst.Name, cst.Attribute))
                       if located.range(n).end.column == span.end_column - 1]
            if not targets:
                continue
            target = targets[0]
            if use.form == "decorator":
                def decorate(updated: cst.BaseExpression, use: DeprecatedAmpUse = use,
                             qb: str = qualified_base) -> cst.Call:
                    return cst.Call(func=_new_function(use, updated, qb),
                                    args=[keyword_arg("device_type", string(use.api.device))])

                edits.replace[id(target)] = decorate
            elif use.spelling == "qualified":
                edits.replace[id(target)] = replace_with(cst.parse_expression(
                    f"{qualified_base}.amp.GradScaler"))
        fixed.add(id(use))
        notes.append(f"line {span.line}: {use.qualname} -> {use.replacement}")
    if not fixed:
        return FixResult(source)
    module = located.module.visit(edits)
    movable = _movable_locals(facts, uses, fixed)
    if movable:
        module = module.visit(_ImportRewrite(movable))
    needs_torch = any(u.spelling == "qualified" and facts.imports.aliases.get(u.local_name) != "torch"
                      for u in uses if id(u) in fixed)
    if needs_torch and alias is None:
        module = ensure_import(module, "import torch", "torch", set())
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
                name = cst.Module([]).code_for_node(alias.name)
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


def _span(finding: Finding) -> tuple[int, int, int, int]:
    s = finding.span
    return (s.line, s.column, s.end_line, s.end_column)


# -- TA301: wrap the training forward in autocast ------------------------------------------


@fixer("TA301")
def fix_no_mixed_precision(source: str, findings: Sequence[Finding],
                           options: Mapping[str, Any]) -> FixResult:
    dtype = str(options.get("autocast-dtype", "bfloat16"))
    if dtype not in ("bfloat16", "float16"):
        return FixResult(source, [f"autocast-dtype {dtype!r} is not bfloat16 or float16; not fixed"])
    located = Located(source)
    edits = Edits()
    notes: list[str] = []
    add_import = False
    for finding in findings:
        data = finding.fix_data
        first = statement_at_line(located, int(data["first_line"]))
        if first is None:
            continue
        parent = located.parent(first)
        if not isinstance(parent, cst.IndentedBlock | cst.Module):
            continue
        body = list(parent.body)
        start = body.index(first)
        end = start
        while end + 1 < len(body) and located.range(body[end]).end.line < int(data["last_line"]):
            end += 1
        torch_name = str(data["torch_name"])
        device = str(data["device_type"])
        literal = device[:1] in ("'", '"')
        if literal and (device.strip("'\"") != "cuda" or not uses_cuda(source)):
            notes.append(f"line {finding.line}: not fixed: the script never uses a GPU, and "
                         "autocast on a CPU is emulated (slower) or off")
            continue
        arguments = [f"device_type={device}", f"dtype={torch_name}.{dtype}"]
        if not literal:  # the script picks its device: autocast only where it runs on CUDA
            arguments.append(f'enabled={device} == "cuda"')
        head = body[start]
        laid_out = fitted_call(f"{torch_name}.autocast", arguments, prefix="with ", suffix=":",
                               column=located.range(head).start.column,
                               limit=line_length(options))
        context = cst.parse_expression(laid_out[len("with "):-1])
        assert isinstance(head, cst.SimpleStatementLine | cst.BaseCompoundStatement)
        wrapped = [head.with_changes(leading_lines=()), *body[start + 1 : end + 1]]
        block = cst.With(items=[cst.WithItem(context)], body=cst.IndentedBlock(body=wrapped),
                         leading_lines=head.leading_lines)
        edits.replace[id(head)] = replace_with(block)
        edits.remove |= {id(s) for s in body[start + 1 : end + 1]}
        add_import = add_import or bool(data["add_import"])
        notes.append(f"line {finding.line}: forward and loss run under "
                     f"torch.autocast({', '.join(arguments)})")
    if edits.empty:
        return FixResult(source)
    module = located.module.visit(edits)
    if add_import:
        module = ensure_import(module, "import torch", "torch", bound_names(module.code))
    return FixResult(module.code, notes)


def uses_cuda(source: str) -> bool:
    """Whether a script names CUDA anywhere (``"cuda"``, ``.cuda()``, ``torch.cuda``): a
    script that never does runs on the CPU, where a ``"cuda"`` autocast is a no-op."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any((isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value.startswith("cuda"))
               or (isinstance(node, ast.Attribute) and node.attr == "cuda")
               for node in ast.walk(tree))


# -- TA303: unscale before clipping ---------------------------------------------------------


@fixer("TA303")
def fix_clip_before_unscale(source: str, findings: Sequence[Finding],
                            options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        call = call_by_span(located, finding.fix_data.get("anchor") or _span(finding))
        stmt = simple_statement(located, call) if call is not None else None
        scaler, optimizer = finding.fix_data.get("scaler"), finding.fix_data.get("optimizer")
        if stmt is None or not scaler or not optimizer or id(stmt) in edits.before:
            continue
        edits.before.setdefault(id(stmt), []).append(statement(f"{scaler}.unscale_({optimizer})"))
        notes.append(f"line {finding.line}: {scaler}.unscale_({optimizer}) before clipping")
    if edits.empty:
        return FixResult(source)
    return FixResult(located.module.visit(edits).code, notes)


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
        call = call_by_span(located, _span(finding))
        if call is None or not isinstance(call.func, cst.Attribute):
            continue
        scaler = str(finding.fix_data["scaler"])
        kind = finding.fix_data.get("kind")
        if kind == "backward":
            edits.replace[id(call)] = rewrite_with(_scaled_backward, scaler)
            notes.append(f"line {finding.line}: backward through {scaler}.scale(...)")
        elif kind == "step":
            edits.replace[id(call)] = rewrite_with(_scaler_step, scaler)
            notes.append(f"line {finding.line}: optimizer stepped through {scaler}.step(...)")
        elif kind == "update":
            stmt = simple_statement(located, call)
            if stmt is not None:
                edits.after.setdefault(id(stmt), []).append(statement(f"{scaler}.update()"))
                notes.append(f"line {finding.line}: {scaler}.update() after the step")
    if edits.empty:
        return FixResult(source)
    return FixResult(located.module.visit(edits).code, notes)


# -- TA305: add a GradScaler ------------------------------------------------------------------


@fixer("TA305")
def fix_fp16_without_scaler(source: str, findings: Sequence[Finding],
                            options: Mapping[str, Any]) -> FixResult:
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings[:1]:  # one scaler per file and round; the loop is shared
        data = finding.fix_data
        loop = statement_at_line(located, int(data["loop_line"]))
        if loop is None:
            continue
        scaler, torch_name, device = str(data["scaler"]), str(data["torch_name"]), str(data["device"])
        if device.startswith(("'", '"')):
            make = f"{scaler} = {torch_name}.amp.GradScaler({device})"
        else:
            make = f'{scaler} = {torch_name}.amp.GradScaler({device}, enabled={device} == "cuda")'
        edits.before.setdefault(id(loop), []).append(statement(make))
        for where in data["backwards"]:
            call = call_by_span(located, where)
            if call is not None:
                edits.replace[id(call)] = rewrite_with(_scaled_backward, scaler)
        steps = list(data["steps"])
        for where in data["clips"]:
            call = call_by_span(located, where)
            stmt = simple_statement(located, call) if call is not None else None
            if stmt is None:
                continue
            after = [s for s in steps if s[0] > where[0]] or steps
            edits.before.setdefault(id(stmt), []).append(
                statement(f"{scaler}.unscale_({after[0][4]})"))
        for step in steps:
            call = call_by_span(located, step)
            stmt = simple_statement(located, call) if call is not None else None
            if call is None or stmt is None:
                continue
            edits.replace[id(call)] = rewrite_with(_scaler_step, scaler)
            edits.after.setdefault(id(stmt), []).append(statement(f"{scaler}.update()"))
        notes.append(f"line {finding.line}: float16 training now uses {make.split(' = ', 1)[1]}")
    if edits.empty:
        return FixResult(source)
    return FixResult(located.module.visit(edits).code, notes)


# -- TA306: drop a scaler bfloat16 does not need ---------------------------------------------


@fixer("TA306")
def fix_grad_scaler_with_bf16(source: str, findings: Sequence[Finding],
                              options: Mapping[str, Any]) -> FixResult:
    facts = parse_facts(source)
    precision = PrecisionFacts(facts)
    located = Located(source)
    edits = Edits()
    notes = []
    for finding in findings:
        spelled = str(finding.fix_data["scaler"])
        plan = _removal_plan(precision, spelled)
        if plan is None:
            call = call_by_span(located, _span(finding))
            if call is None:
                continue
            edits.replace[id(call)] = lambda c: append_args(c, [keyword_arg("enabled", cst.Name("False"))])
            notes.append(f"line {finding.line}: {spelled} disabled (enabled=False)")
            continue
        statements, scales, steps = plan
        for node in statements:
            stmt = statement_at_line(located, node.lineno)
            if stmt is not None:
                edits.remove.add(id(stmt))
        for call_node in scales:
            call = matching_call(located, facts, call_node)
            if call is not None:
                edits.replace[id(call)] = _unwrap_scale
        for call_node in steps:
            call = matching_call(located, facts, call_node)
            if call is not None:
                edits.replace[id(call)] = lambda c: cst.Call(
                    func=cst.Attribute(value=as_receiver(c.args[0].value), attr=cst.Name("step")))
        notes.append(f"line {finding.line}: GradScaler {spelled} removed (bfloat16 needs no scaling)")
    if edits.empty:
        return FixResult(source)
    module = located.module.visit(edits)
    return FixResult(_drop_unused_imports(module, {"GradScaler"}).code, notes)


def _unwrap_scale(call: cst.Call) -> cst.BaseExpression:
    """``scaler.scale(x)`` → ``x``, parenthesised when it is the receiver of ``.backward()``."""
    value = call.args[0].value
    if isinstance(value, cst.Name | cst.Attribute | cst.Call | cst.Subscript):
        return value.with_changes(lpar=call.lpar, rpar=call.rpar) if call.lpar else value
    return as_receiver(unparenthesized(value))


def _removal_plan(precision: PrecisionFacts, spelled: str
                  ) -> tuple[list[ast.stmt], list[ast.Call], list[ast.Call]] | None:
    """Statements to delete and calls to unwrap, or None when the scaler has other uses."""
    module = precision.module
    statements: list[ast.stmt] = []
    scales: list[ast.Call] = []
    steps: list[ast.Call] = []
    handled: set[int] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and dotted(node.targets[0]) == spelled:
            if not isinstance(node.value, ast.Call) or \
                    not (module.call_name(node.value) or "").endswith("GradScaler"):
                return None
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
                return None
            handled.add(id(node.func.value))
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Name | ast.Attribute) and dotted(node) == spelled \
                and id(node) not in handled:
            parent = module.parents.get(node)
            if not (isinstance(parent, ast.Attribute) and dotted(parent) and id(parent.value) in handled):
                return None
    return statements, scales, steps


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
                name = cst.Module([]).code_for_node(alias.name)
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
