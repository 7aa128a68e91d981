"""The micro-batch size of a training loop, where it is known statically."""

from __future__ import annotations

import ast
from dataclasses import replace

from trainaudit.model.definitions import assignments, target_key
from trainaudit.model.loops.records import BatchSize, LoopNode
from trainaudit.model.module import FunctionNode, ModuleFacts, int_value, keyword

# Names of a sequence length (tokens per sample), as variables, flags or config fields.
SEQUENCE_NAMES = ("block_size", "seq_len", "seq_length", "max_seq_len", "max_seq_length",
                  "sequence_length", "context_length", "ctx_len", "max_length")


def batch_size_of(module: ModuleFacts, loop: LoopNode, function: str,
                  used: frozenset[str] = frozenset()) -> BatchSize | None:
    """The micro-batch size of a loop with its sequence length where one is read (tokens)."""
    size = _samples(module, loop, function, used)
    if size is None:
        return None
    fn = module.functions.get(function)
    for name in SEQUENCE_NAMES:
        if name in used:
            known = (_variable_int(module, name, fn) or _argparse_default(module, name)
                     or _config_default(module, name))
            if known is not None and known.value > 1:
                return replace(size, sequence=known.value)
    return size


def _samples(module: ModuleFacts, loop: LoopNode, function: str,
             used: frozenset[str] = frozenset()) -> BatchSize | None:
    """The micro-batch size of a loop, where it is knowable statically. ``used``: names the
    loop's call tree reads (a ``batch_size`` variable counts only if something reads it)."""
    fn = module.functions.get(function)
    body = fn.body if fn is not None else module.tree.body
    if isinstance(loop, ast.For | ast.AsyncFor):
        iterable = _unwrap_iterable(loop.iter)
        loader = _loader_call(module, iterable, body)
        if loader is not None:
            size = keyword(loader, "batch_size")
            if size is None and len(loader.args) > 1:
                size = loader.args[1]
            if size is None:
                if keyword(loader, "batch_sampler") or any(kw.arg is None for kw in loader.keywords):
                    return None  # a batch sampler, or **kwargs that may hold batch_size
                return BatchSize(1, "DataLoader default")
            known = resolve_int(module, size, fn)
            return replace(known, expression=module.segment(size)) if known else None
        if not isinstance(iterable, ast.Call | ast.Name | ast.Attribute):
            return None
    # A while loop fetching its own batches (nanoGPT's get_batch): a batch_size variable.
    for name in ("batch_size", "micro_batch_size"):
        if name not in used:
            continue
        value = _variable_int(module, name, fn)
        if value is not None:
            return replace(value, expression=name)
    return None


def _unwrap_iterable(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Name | ast.Attribute):
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        if name in ("enumerate", "tqdm", "iter", "progress_bar", "track"):
            node = node.args[0]
        else:
            break
    return node


def _loader_call(module: ModuleFacts, node: ast.expr, body: list[ast.stmt]) -> ast.Call | None:
    """The ``DataLoader(...)`` call a loop's iterable was made by, in the right scope."""
    if isinstance(node, ast.Call):
        name = module.call_name(node) or ""
        return node if name.endswith("DataLoader") else None
    key = target_key(node) if isinstance(node, ast.Name | ast.Attribute) else None
    if key is None:
        return None
    if isinstance(node, ast.Name):
        # A local name is made in its function, else at module level; never in another function.
        local = [v for v in assignments(body, key) if v is not None]
        values = local or [v for v in assignments(module.tree.body, key) if v is not None]
    else:
        values = [sub.value for sub in module.nodes if isinstance(sub, ast.Assign)
                  and any(target_key(t) == key for t in sub.targets)]
    for value in values:
        if isinstance(value, ast.Call) and (module.call_name(value) or "").endswith("DataLoader"):
            return value
    return None


def resolve_int(module: ModuleFacts, node: ast.expr, fn: FunctionNode | None) -> BatchSize | None:
    """An integer expression's value: a literal, a variable, an argparse default, a config field."""
    literal = int_value(node)
    if literal is not None:
        return BatchSize(literal, "literal")
    if isinstance(node, ast.Name):
        return _variable_int(module, node.id, fn)
    if isinstance(node, ast.Attribute):
        found = _argparse_default(module, node.attr)
        if found is not None:
            return found
        return _config_default(module, node.attr)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
            and isinstance(node.slice.value, str):
        return _config_default(module, node.slice.value)
    if isinstance(node, ast.BinOp):
        left = resolve_int(module, node.left, fn)
        right = resolve_int(module, node.right, fn)
        if left is None or right is None:
            return None
        a, b = left.value, right.value
        value: int | None = None
        if isinstance(node.op, ast.Mult):
            value = a * b
        elif isinstance(node.op, ast.FloorDiv) and b:
            value = a // b
        elif isinstance(node.op, ast.Add):
            value = a + b
        elif isinstance(node.op, ast.Sub):
            value = a - b
        return BatchSize(value, f"{left.source} and {right.source}") if value is not None else None
    return None


def _variable_int(module: ModuleFacts, name: str, fn: FunctionNode | None) -> BatchSize | None:
    if fn is not None:
        params = fn.args
        positional = [*params.posonlyargs, *params.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(params.defaults))
        defaults += params.defaults
        for arg, default in [*zip(positional, defaults, strict=True),
                             *zip(params.kwonlyargs, params.kw_defaults, strict=True)]:
            if arg.arg == name:
                known = int_value(default)
                return BatchSize(known, f"parameter {name} default") if known is not None else None
        for assigned in assignments(fn.body, name):
            literal = int_value(assigned)
            if literal is not None:
                return BatchSize(literal, f"{name} = {literal}")
            return None
    values = list(assignments(module.tree.body, name))
    if len(values) == 1:
        literal = int_value(values[0])
        if literal is not None:
            return BatchSize(literal, f"{name} = {literal}")
    return None


def _argparse_default(module: ModuleFacts, dest: str) -> BatchSize | None:
    for node in module.nodes:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        explicit = keyword(node, "dest")
        names = {f.lstrip("-").replace("-", "_") for f in flags if f.startswith("--")}
        if isinstance(explicit, ast.Constant) and isinstance(explicit.value, str):
            names = {explicit.value}
        if dest in names:
            value = int_value(keyword(node, "default"))
            flag = next((f for f in flags if f.startswith("--")), dest)
            return BatchSize(value, f"argparse {flag} default") if value is not None else None
    return None


def _config_default(module: ModuleFacts, key: str) -> BatchSize | None:
    for node in module.nodes:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id == key and module.enclosing_class(node) is not None:
            value = int_value(node.value)
            if value is not None:
                return BatchSize(value, f"config field {key}")
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == key:
                    value = int_value(v)
                    if value is not None:
                        return BatchSize(value, f"config {key!r}")
    return None


