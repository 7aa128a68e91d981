"""File-level facts of the loop model, computed once per file."""

from __future__ import annotations

import ast
import re
from functools import cached_property

from trainaudit.diagnostics import Span
from trainaudit.model.definitions import assignments, target_key
from trainaudit.model.loops.patterns import BACKWARD_CALL_RE, TRAINY, first_line, last_name
from trainaudit.model.loops.records import LoopNode, Site
from trainaudit.model.module import ModuleFacts, walk_local

# File names of throughput benchmarks and profiling scripts (``bench.py``, ``profile_step.py``).
BENCHMARK_PATH = re.compile(r"(^|_)(bench|benchmark|profil\w*|throughput|speed\w*)(_|\.py$)", re.IGNORECASE)


def _falls_back_to_cpu(module: ModuleFacts) -> bool:
    """An accelerator test (``torch.cuda.is_available()``, ``torch.accelerator.is_available()``,
    ``get_accelerator().is_available()``) and a ``"cpu"`` device in one file."""
    text = module.source
    if "is_available" not in text or "cpu" not in text:
        return False
    asks = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == "is_available" for n in module.nodes)
    return asks and any(isinstance(n, ast.Constant) and n.value == "cpu" for n in module.nodes)


class FileScan:
    """File-level facts of the loop model: bindings, delegation, DDP, model names, which
    functions may reach a backward (the cheap tests before walking a loop)."""

    def __init__(self, module: ModuleFacts) -> None:
        self.module = module

    # -- file-level facts ---------------------------------------------------------

    @cached_property
    def imports_deepspeed(self) -> bool:
        return any(name == "deepspeed" or name.startswith("deepspeed.")
                   for name in self.module.imports.modules)

    @cached_property
    def _scan(self) -> tuple[frozenset[str], bool, frozenset[str]]:
        """One pass over the tree: (file delegation, DDP used, defined names)."""
        module = self.module
        delegation: set[str] = set()
        ddp = False
        defined: set[str] = set()
        wrappers = ("DistributedDataParallel", "DDP", "FullyShardedDataParallel", "FSDP")
        for node in module.nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.ClassDef):
                defined.add(node.name)
                for base in module.class_bases(node):
                    if base.startswith("transformers") and base.endswith("Trainer"):
                        delegation.add("hf-trainer")
                    if "LightningModule" in base:
                        delegation.add("lightning")
            elif isinstance(node, ast.Call):
                name = module.call_name(node) or ""
                last = name.rsplit(".", 1)[-1]
                if name.startswith("deepspeed.") and last == "initialize":
                    delegation.add("deepspeed")
                if last in wrappers:
                    ddp = True
        return frozenset(delegation), ddp, frozenset(defined)

    @cached_property
    def traits(self) -> frozenset[str]:
        """"gpu": the file can put work on a GPU (a ``cuda``/``nccl`` device or backend, a
        ``.cuda()`` call, a framework that places models); "cpu-fallback": it runs on the
        CPU when no accelerator is there (``... if torch.cuda.is_available() else "cpu"``);
        "benchmark": a throughput or profiling script, or any script under ``benchmarks/``;
        "adapters": PEFT / LoRA fine-tuning."""
        module = self.module
        found: set[str] = set()
        parts = module.path.replace("\\", "/").split("/")
        stem = parts[-1]
        in_benchmarks = any(part in ("benchmark", "benchmarks") for part in parts[:-1])
        if BENCHMARK_PATH.search(stem) or in_benchmarks \
                or any(m.startswith("torch.profiler") for m in module.imports.modules):
            found.add("benchmark")
        if any(m == "peft" or m.startswith("peft.") for m in module.imports.modules):
            found.add("adapters")
        if self.file_delegation or any(m.split(".")[0] in ("accelerate", "deepspeed", "lightning")
                                       for m in module.imports.modules):
            found.add("gpu")
        for node in module.nodes:
            if "gpu" in found:
                break
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith(("cuda", "nccl")):
                found.add("gpu")
            elif isinstance(node, ast.Attribute) and node.attr == "cuda":
                found.add("gpu")  # torch.cuda.*, model.cuda()
        if _falls_back_to_cpu(module):
            found.add("cpu-fallback")
        return frozenset(found)

    @property
    def file_delegation(self) -> frozenset[str]:
        """Frameworks the file hands training to (HF Trainer subclasses, Lightning, DeepSpeed)."""
        return self._scan[0]

    @property
    def ddp(self) -> bool:
        """The file wraps a model in DistributedDataParallel / FSDP."""
        return self._scan[1]

    @cached_property
    def method_aliases(self) -> dict[str, str]:
        """``self.fwd_bwd_fn = self._forward_backward_body`` (or ``= wrap(self.method)``):
        ``Class.fwd_bwd_fn`` → ``Class._forward_backward_body``."""
        aliases: dict[str, str] = {}
        for name, fn in self.module.functions.items():
            if "." not in name:
                continue
            owner = name.rsplit(".", 1)[0]
            for node in walk_local(fn.body):
                if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                    continue
                target = node.targets[0]
                if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self"):
                    continue
                value = node.value
                if isinstance(value, ast.Call) and value.args:
                    value = value.args[0]
                if (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
                        and value.value.id == "self" and f"{owner}.{value.attr}" in self.module.functions):
                    aliases.setdefault(f"{owner}.{target.attr}", f"{owner}.{value.attr}")
        return aliases

    @property
    def defined_names(self) -> frozenset[str]:
        """Functions and classes defined anywhere in the file, by their own name."""
        return self._scan[2]

    # -- prefilter ------------------------------------------------------------------

    def _text(self, node: ast.AST) -> str:
        lines = self.module.lines
        return "\n".join(lines[getattr(node, "lineno", 1) - 1: getattr(node, "end_lineno", 0) or 0])

    @cached_property
    def backward_functions(self) -> frozenset[str]:
        """Functions whose call tree (in this file) may contain a backward: the text says so."""
        module = self.module
        if not BACKWARD_CALL_RE.search(module.source):
            return frozenset()
        found = {name for name, fn in module.functions.items()
                 if BACKWARD_CALL_RE.search(self._text(fn))}
        callers: dict[str, set[str]] = {}
        for caller, callees in module.call_graph.items():
            for callee in callees:
                callers.setdefault(callee, set()).add(caller)
        aliases = self.method_aliases
        for alias, target in aliases.items():
            callers.setdefault(target, set()).add(alias)
        if aliases:  # ``self.fwd_bwd_fn(...)`` calls an alias of a method
            for caller, calls in module.calls_by_function.items():
                owner = caller.rsplit(".", 1)[0] if "." in caller else ""
                for call in calls:
                    func = call.func
                    if (owner and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                            and func.value.id == "self" and f"{owner}.{func.attr}" in aliases):
                        callers.setdefault(f"{owner}.{func.attr}", set()).add(caller)
        stack = list(found)
        while stack:
            for caller in callers.get(stack.pop(), ()):
                if caller not in found:
                    found.add(caller)
                    stack.append(caller)
        return frozenset(found)

    @cached_property
    def _trainy_imports(self) -> bool:
        return any(TRAINY.search(name) for name in self.module.imports.aliases)

    def may_train(self, function: str, loop: LoopNode) -> bool:
        """Cheap test before walking a loop: backward in its text or in a local callee, or a
        call to an imported function whose name suggests training."""
        if BACKWARD_CALL_RE.search(self._text(loop)):
            return True
        module = self.module
        if not self.backward_functions and not self._trainy_imports:
            return False
        owner = function.rsplit(".", 1)[0] if "." in function else ""
        for node in ast.walk(loop):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name):
                if func.id in self.backward_functions:
                    return True
                if module.is_imported(func.id) and TRAINY.search(func.id):
                    return True
            elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and func.value.id in ("self", "cls") and owner
                    and f"{owner}.{func.attr}" in self.backward_functions):
                return True
        return False

    # -- operations ---------------------------------------------------------------

    def site(self, node: ast.AST, function: str) -> Site:
        return Site(self.module.path, self.module.span(node), function,
                    first_line(self.module.segment(node)))

    def context_name(self, expr: ast.expr) -> str:
        """A ``with`` item or decorator as a qualified name (``torch.autocast``,
        ``model.no_sync``); a name bound to a context manager resolves to what made it."""
        module = self.module
        if isinstance(expr, ast.Call):
            call, expr = expr, expr.func
            name = module.qualname(expr)
            if name is not None and name.endswith("set_grad_enabled"):
                return _grad_switch(call)
            if isinstance(expr, ast.Name | ast.Attribute):
                chosen = [m for m in self._made_by(expr) if "|" in m]
                if chosen:  # ``with sync():`` where ``sync = a if k else b``
                    return "|".join(sorted(set(chosen)))
            return name or first_line(module.segment(expr))
        if isinstance(expr, ast.Name | ast.Attribute):
            made = self._made_by(expr)
            if made:
                return "|".join(sorted(set(made)))
            return module.qualname(expr) or module.segment(expr)
        if isinstance(expr, ast.IfExp):
            return f"{self.context_name(expr.body)}|{self.context_name(expr.orelse)}"
        return first_line(module.segment(expr))

    def _made_by(self, expr: ast.expr) -> list[str]:
        """What a name (or ``self.x``) used as a context was assigned where it is used (its
        function, else the file; every method for ``self.x``): the call that made it, or
        ``a|b`` for ``a if k else b`` (calls, or the callables ``nullcontext if last else
        ddp.no_sync`` entered as ``with sync():``)."""
        module = self.module
        key = target_key(expr)
        if key is None:
            return []
        fn = module.enclosing_function(expr)
        if isinstance(expr, ast.Attribute):
            cls = module.enclosing_class(expr)
            bodies = [f.body for name, f in module.functions.items()
                      if cls is not None and name.startswith(module.scope_name(cls) + ".")]
            values = [node.value for body in bodies for node in walk_local(body)
                      if isinstance(node, ast.Assign) and any(
                          isinstance(t, ast.Attribute) and target_key(t) == key for t in node.targets)]
        else:
            values = [v for v in assignments(fn.body, key) if v is not None] if fn is not None else []
            values = values or [v for v in assignments(module.tree.body, key) if v is not None]
        made = [_maker(module, value) for value in values]
        return [m for m in made if m]

    def _loop_site(self, loop: LoopNode, function: str) -> Site:
        """The loop's header: from ``for``/``while`` to the end of its iterable or test."""
        module = self.module
        head = loop.test if isinstance(loop, ast.While) else loop.iter
        if isinstance(loop, ast.While):
            header = f"while {module.segment(loop.test)}:"
        else:
            header = f"for {module.segment(loop.target)} in {module.segment(loop.iter)}:"
        start, end = module.span(loop), module.span(head)
        span = Span(start.line, start.column, end.end_line, end.end_column)
        return Site(module.path, span, function, first_line(header))

    # -- losses -------------------------------------------------------------------


def _maker(module: ModuleFacts, value: ast.expr) -> str | None:
    """The qualified call a value is made by; ``a|b`` for a conditional of two calls or
    two callables."""
    if isinstance(value, ast.Await):
        value = value.value
    if isinstance(value, ast.Call):
        return module.call_name(value) or last_name(module.segment(value.func))
    if isinstance(value, ast.IfExp):
        sides = [_maker(module, side) or (module.qualname(side) if isinstance(side, ast.Name | ast.Attribute)
                                          else None) for side in (value.body, value.orelse)]
        return "|".join(s for s in sides if s) if all(sides) else None
    return None


def _grad_switch(call: ast.Call) -> str:
    """``torch.set_grad_enabled(flag)`` as the context it amounts to."""
    flag = call.args[0] if call.args else None
    if isinstance(flag, ast.Constant) and isinstance(flag.value, bool):
        return "torch.enable_grad" if flag.value else "torch.no_grad"
    return "torch.no_grad|torch.enable_grad"
