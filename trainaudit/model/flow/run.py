"""One run of the flow model over a project, shared by every family that reads it (the
label rules, TA201's batch sizes): the interpreter runs once, its readings are cached on
the project."""

from __future__ import annotations

from trainaudit.model.flow.interp import Interpreter
from trainaudit.model.flow.program import Program
from trainaudit.model.flow.values import Const, Loader, Site, Value, options_of
from trainaudit.model.labels.observe import LabelObserver
from trainaudit.model.project import Project


class FlowRun:
    """The interpreter run over every entry, with what it observed."""

    def __init__(self, project: Project) -> None:
        self.observer = LabelObserver()
        self.interpreter = Interpreter(Program(project), self.observer)
        self.observer.calls_in_progress = self.interpreter.calls_in_progress
        self.interpreter.run()

    @classmethod
    def of(cls, project: Project) -> FlowRun:
        return project.cached("flow-run", lambda: cls(project))

    def batch_size(self, path: str, line: int) -> tuple[int, Site] | None:
        """The batch size of the loader a ``for`` loop at ``path:line`` iterates, where
        every context that gives the loop a known loader agrees on one integer (and the
        first loader that sets it). Contexts that give an unknown tell nothing."""
        sizes: dict[int, Site] = {}
        for value in self.observer.iterations.get((path, line), []):
            for option in options_of(value):
                if isinstance(option, Loader):
                    size = _loader_batch(option)
                    if size is None:
                        return None  # a loader whose batch size is not a known integer
                    sizes.setdefault(size[0], size[1])
        return next(iter(sizes.items())) if len(sizes) == 1 else None


def _loader_batch(value: Value) -> tuple[int, Site] | None:
    if isinstance(value, Loader) and isinstance(value.batch_size, Const) \
            and type(value.batch_size.value) is int:
        return value.batch_size.value, value.site
    return None
