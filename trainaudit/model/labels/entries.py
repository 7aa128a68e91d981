"""Phase 1 of the label family: keep a file's outline for the flow model, and list where
its queries start (functions that hold a loss, a model call with labels, a roll, a
trainer, a backward pass, a loader, a script's top-level code, ``main``)."""

from __future__ import annotations

import ast
import bisect
from bisect import bisect_right

from trainaudit.model.flow.outline import outline_of
from trainaudit.model.flow.program import FlowSource
from trainaudit.model.module import ModuleFacts, iter_calls, parameter_names

# A file mentioning none of these can hold no label producer or loss site.
TRIGGERS = ("roll", "cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss", "label",
            "target", "ForCausalLM", "LMHead", "1:]", "1:,", "+ 1:", "+1:", "[1:",
            "DataLoader", "Dataset",
            # a script's driver: it may call a trainer of another file that reaches a loss
            "__main__", "def main(", ".fit(")
# Calls where a label reading is made (a loss, a roll, a trainer, a model given labels)...
_SINK_CALLS = {"cross_entropy", "nll_loss", "roll", "Trainer", "Seq2SeqTrainer",
               "CrossEntropyLoss", "NLLLoss"}
_SINK_KEYWORDS = {"labels", "shift_labels"}
# ... and calls of code that drives training, where values get bound top-down.
_DRIVER_CALLS = {"backward", "DataLoader"}
_CRITERIA = {"CrossEntropyLoss", "NLLLoss"}


def _call_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else (
        func.id if isinstance(func, ast.Name) else None)


def _has_sink(calls: list[ast.Call]) -> bool:
    return any(_call_name(call) in _SINK_CALLS or any(kw.arg in _SINK_KEYWORDS
                                                      for kw in call.keywords)
               for call in calls)


def _starts_query(calls: list[ast.Call]) -> bool:
    return _has_sink(calls) or any(_call_name(call) in _DRIVER_CALLS for call in calls)


def _has_code(body: list[ast.stmt]) -> bool:
    """Top-level statements beyond definitions, imports and constants: a script."""
    for stmt in body:
        if isinstance(stmt, ast.If | ast.For | ast.While | ast.With | ast.Expr) and not (
                isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            return True
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call) \
                and _starts_query([stmt.value]):
            return True
    return False


def _names_a_criterion(module: ModuleFacts) -> bool:
    """The code refers to a loss class (``nn.CrossEntropyLoss``, ``NLLLoss``): a criterion
    object may be made here and handed on. Text in a docstring or a class so named is not,
    nor a reference only compared or type-tested (``fn is nn.CrossEntropyLoss``,
    ``isinstance(m, nn.NLLLoss)``): that reads a criterion made elsewhere."""
    if "CrossEntropyLoss" not in module.source and "NLLLoss" not in module.source:
        return False
    if any(qualified.rsplit(".", 1)[-1] in _CRITERIA
           for qualified in module.imports.aliases.values()):
        return True  # imported, perhaps under another name
    return any(((isinstance(node, ast.Name) and node.id in _CRITERIA)
                or (isinstance(node, ast.Attribute) and node.attr in _CRITERIA))
               and not _only_tested(node, module.parents)
               for node in module.nodes)


def _only_tested(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """The expression is an operand of a comparison or the type of an ``isinstance`` /
    ``issubclass`` test (an element of a tuple, list or set there too)."""
    operand, parent = node, parents.get(node)
    if isinstance(parent, ast.Tuple | ast.List | ast.Set):
        operand, parent = parent, parents.get(parent)
    return isinstance(parent, ast.Compare) or (
        isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name)
        and parent.func.id in ("isinstance", "issubclass") and operand in parent.args[1:])


def _calls_a_held_callable(function: ast.FunctionDef | ast.AsyncFunctionDef, calls: list[ast.Call],
                           module_names: set[str]) -> bool:
    """A call with two arguments of something the function holds, not something defined
    or imported: a parameter, a local or a module-level variable, or an attribute of a
    parameter (``criterion(logits, y)``, ``self.loss_fn(out, labels)``)."""
    parameters = parameter_names(function)
    local_names: set[str] | None = None
    for call in calls:
        if len(call.args) + len(call.keywords) < 2:
            continue
        callee = call.func
        if isinstance(callee, ast.Name):
            if local_names is None:
                local_names = _locals(function)
            if callee.id in parameters or callee.id in module_names or callee.id in local_names:
                return True
        elif isinstance(callee, ast.Attribute):
            base = callee.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in parameters:
                return True
    return False


def _callers_within(calls_of: dict[str, list[ast.Call]], entries: list[str]) -> list[str]:
    """Functions of the file that call one of ``entries`` (by its name, as ``f(...)`` or
    ``x.f(...)``) with two arguments or more, and their callers in turn."""
    found: list[str] = []
    wanted = {entry.rsplit(".", 1)[-1] for entry in entries if entry}
    for _ in range(3):  # a few levels: a loss helper, the step, the loop
        added = [name for name, calls in calls_of.items()
                 if name not in entries and name not in found
                 and any(len(call.args) + len(call.keywords) >= 2 and _call_name(call) in wanted
                         for call in calls)]
        if not added:
            break
        found += added
        wanted = {name.rsplit(".", 1)[-1] for name in added}
    return found


def _locals(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    return {target.id for stmt in ast.walk(function) if isinstance(stmt, ast.Assign)
            for target in stmt.targets if isinstance(target, ast.Name)}


def _module_names(body: list[ast.stmt]) -> set[str]:
    """Names module-level assignments bind (a criterion made at import time)."""
    return {target.id for stmt in body if isinstance(stmt, ast.Assign | ast.AnnAssign)
            for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
            if isinstance(target, ast.Name)}


def _holds_line(lines: list[int], stmt: ast.stmt) -> bool:
    """One of the sorted line numbers lies within the statement."""
    at = bisect.bisect_left(lines, stmt.lineno)
    return at < len(lines) and lines[at] <= (stmt.end_lineno or stmt.lineno)


def flow_source(module: ModuleFacts) -> FlowSource:
    """The file's source and its entries. In a file that names a criterion class, any
    function calling a callable it holds with two arguments may be using one."""
    criterion = _names_a_criterion(module)
    module_names = _module_names(module.tree.body) if criterion else set()
    entries: list[str] = []
    if _has_code(module.tree.body) or _starts_query(list(iter_calls(module.tree.body))):
        entries.append("")
    calls_of = {name: list(iter_calls(function.body)) for name, function in module.functions.items()}
    for name, function in module.functions.items():
        calls = calls_of[name]
        if name.rsplit(".", 1)[-1] == "main" or _starts_query(calls) or (
                criterion and _calls_a_held_callable(function, calls, module_names)):
            entries.append(name)
    if criterion:  # who calls such a function here may hand it the criterion it holds
        entries += _callers_within(calls_of, entries)
    # A Hugging Face causal LM computes its loss from ``labels`` in any call of it.
    causal_lm = "ForCausalLM" in module.source or "LMHeadModel" in module.source
    every_call = [n for n in module.nodes if isinstance(n, ast.Call)]
    sinks = criterion or causal_lm or _has_sink(every_call)
    # What a driver elsewhere must call to reach a sink here: the top-level definitions
    # that hold one (all of them where the sink is a criterion or a causal LM by name).
    sink_lines = sorted(call.lineno for call in every_call if _has_sink([call]))
    defines = frozenset(
        stmt.name for stmt in module.tree.body
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and (criterion or causal_lm or _holds_line(sink_lines, stmt)))
    called = frozenset(callee for call in every_call if (callee := _call_name(call)) is not None)
    return FlowSource(module.is_package, tuple(entries), sinks, defines, called,
                      outline_of(module.tree), _calls_by_definition(module.tree.body, every_call))


def _calls_by_definition(body: list[ast.stmt], calls: list[ast.Call]
                         ) -> tuple[tuple[str, frozenset[str]], ...]:
    """Each top-level function or class with the simple names its code calls (methods and
    nested functions included): a module reached from a loss module is reached in turn
    through the definitions that call it. ``calls``: every call of the file (each goes to
    the definition whose lines hold it; no second walk of the tree)."""
    definitions = [stmt for stmt in body
                   if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    starts = [min([stmt.lineno, *(d.lineno for d in stmt.decorator_list)]) for stmt in definitions]
    names: list[set[str]] = [set() for _ in definitions]
    for call in calls:
        index = bisect_right(starts, call.lineno) - 1
        if index >= 0 and call.lineno <= (definitions[index].end_lineno or 0) \
                and (name := _call_name(call)) is not None:
            names[index].add(name)
    return tuple((stmt.name, frozenset(found)) for stmt, found in zip(definitions, names, strict=True))
