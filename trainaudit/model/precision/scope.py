"""What a fix needs to know about a file's scope: the ``torch`` alias, the script's
device, and the files linked to a file by imports."""

from __future__ import annotations

import ast

from trainaudit.model.module import ModuleFacts, walk_local
from trainaudit.model.precision.api import dotted, low_dtype_of
from trainaudit.model.precision.facts import PrecisionFacts
from trainaudit.model.project import Project


def bound_names(tree: ast.AST) -> set[str]:
    """Every name a tree binds anywhere (imports, assignments, defs, parameters)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return names


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


def _closure(edges: dict[str, set[str]], starts: set[str]) -> set[str]:
    seen = set(starts)
    stack = list(starts)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def related_paths(project: Project, path: str) -> set[str]:
    """Files a file imports or is imported by, transitively (not mere siblings)."""
    return _closure(project.import_graph, {path}) | _closure(project.importers, {path})


def trainer_neighbourhood(project: Project, path: str) -> set[str]:
    """``related_paths`` plus what the files importing this one import: the trainer that
    calls a training helper also builds its precision policy in a module of its own."""
    importers = _closure(project.importers, {path})
    return importers | _closure(project.import_graph, importers)


def is_test_file(path: str) -> bool:
    """A test module: under ``tests/`` or ``test/``, ``test_*.py``, ``*_test.py``, ``conftest.py``."""
    parts = path.replace("\\", "/").split("/")
    name = parts[-1]
    return "tests" in parts[:-1] or "test" in parts[:-1] or name.startswith("test_") \
        or name.endswith("_test.py") or name == "conftest.py"
