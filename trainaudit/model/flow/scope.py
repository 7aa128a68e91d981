"""Module scope for the interpreter: a global read through its definition or import
without running the module body where nothing else binds it, the body's run where code
rebinds it, and dotted names resolved to checked definitions or to the library."""

from __future__ import annotations

from trainaudit.model.flow import calls, library
from trainaudit.model.flow.program import FlowModule, Program
from trainaudit.model.flow.values import ClassValue, FunctionValue, Library, Opaque, Ref, Value


class ModuleScope:
    """The globals half of ``Interpreter`` (which runs module bodies: ``module_env``)."""

    program: Program
    module_envs: dict[str, dict[str, Value]]
    resolving: set[tuple[str, str]]  # globals read through imports now

    def module_env(self, module: FlowModule) -> dict[str, Value]:
        """The module's globals after its body ran (``Interpreter`` runs it)."""
        raise NotImplementedError

    def global_value(self, module: FlowModule, name: str) -> Value:
        found = self._global(module, name)
        if found is not None:
            return found
        return Library(f"builtins.{name}") if name in calls.BUILTINS else Opaque(
            ("global", module.name, name))

    def _global(self, module: FlowModule, name: str, asked: str | None = None) -> Value | None:
        """A module's global: bound only by its definition or its import, it is read
        without running the module body; where module-level code binds it too
        (``f = mocked_f`` under an ``if``) the body's run says which values it may have.
        ``asked``: the dotted name an import asked for, which may make it the library."""
        env = self.module_envs.get(module.name)
        if env is not None and name in env:
            return env[name]
        if name not in module.bound_by_code:
            found = self._declared(module, name, asked)
            if found is not None:
                return found
        return self.module_env(module).get(name)

    def _declared(self, module: FlowModule, name: str, asked: str | None = None) -> Value | None:
        """What the module's one definition or one import of ``name`` binds, if it has
        exactly one of them (an import cycle reads as unknown)."""
        qualified = module.facts.imports.aliases.get(name)
        if module.has_definition(name):
            return self._definition(module, name, asked) if qualified is None else None
        key = (module.name, name)
        if qualified is None or key in self.resolving:
            return None
        self.resolving.add(key)
        try:
            return self.resolve_qualified(qualified, module.path, asked)
        finally:
            self.resolving.discard(key)

    def _definition(self, module: FlowModule, qualname: str, asked: str | None = None) -> Value:
        """A checked function or class; the library itself where an import asked for a
        framework's name the library model knows (``library.is_modelled``)."""
        is_class = module.defines_class(qualname)
        if asked is not None and library.is_modelled(asked, is_class):
            return Library(asked)
        ref = Ref(module.name, qualname)
        return ClassValue(ref) if is_class else FunctionValue(ref)

    def resolve_qualified(self, qualified: str, importer: str | None = None,
                          asked: str | None = None) -> Value:
        """A dotted name: a checked definition where the tree has it, else a library name
        (``asked``: the name first asked for, when this one is what it re-exports)."""
        asked = asked or qualified
        if library.is_modelled(asked, False):
            return Library(asked)
        found = self.program.resolve(qualified, importer)
        if found is not None:
            module, name = found
            if "." not in name:
                value = self._global(module, name, asked)
                if value is not None:
                    return value
            elif module.has_definition(name):
                return self._definition(module, name, asked)
        return Library(qualified)
