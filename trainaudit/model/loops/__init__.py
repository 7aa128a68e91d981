"""The training-loop model: which loops train a model, and what happens in them.

A *training loop* is the innermost ``for``/``while`` loop whose call tree runs
a ``backward`` and an optimizer step that are not both inside one loop nested
in it (an epoch loop around a batch loop is an *outer* loop; nanoGPT's
``while`` loop around a ``micro_step`` loop is the training loop, with the
micro-steps inside it). Helpers it calls are followed: functions and methods of
the same file (``self.fn = self._body`` aliases included) here, functions
imported from another checked file in ``project_training_loops``.

Usage (a module rule)::

    from trainaudit.model.loops import find_training_loops

    for loop in find_training_loops(module):          # module: ModuleFacts; cached per file
        loop.header                  # Site of the for/while header (path, span, function, text)
        loop.node                    # the ast.For / ast.While
        loop.ops("backward")         # Operation records in execution order (helpers inlined)
        step = loop.first("optimizer_step")
        step.guards                  # Guard(`if` test, negated, accumulation?) from the loop down
        step.contexts                # `with` items and helper decorators around it, qualified
                                     # ("torch.autocast", "torch.no_grad", "model.no_sync");
                                     # a bound `ctx` resolves to what made it
        step.under("no_sync")        # a context whose name ends with ...
        step.loops                   # loops nested in the training loop around it
        step.via                     # helper calls from the loop body down to it
        step.node                    # the ast.Call (None once a record crossed files)
        loop.forwards                # model(...) calls (Operation, kind "forward")
        loop.losses                  # LossSite of each backward: text, scaled?, divisor
        loop.accumulation            # Accumulation("gated" | "micro-loop" | "delegated", steps, gate)
        loop.delegation              # {"accelerate", "fabric", "deepspeed", "hf-trainer", ...}
        loop.batch_size              # BatchSize(4, "argparse --batch-size default",
                                     #           "args.batch_size") or None
        loop.helpers                 # local functions its call tree reaches
        loop.outer_loops, loop.ddp   # enclosing loops; DDP/FSDP used in the file
        step.subject                 # forwards, eval/train: the object named in the loop's
                                     # function (a helper's parameter bound to the call's
                                     # argument; UNBOUND "?" when not known)
        for epoch in loop.enclosing:     # loops whose call tree contains it (the epoch loop
            epoch.inside(loop)           # around it, or one calling its function), walked
            epoch.may_run_later(a, b)    # whole: b may run after a in a later pass too

    loop_analysis(module).function_ops("train_step")   # one function's call tree, no loop

A project rule sees loops whose helper lives in another checked file::

    from trainaudit.model.loops import project_training_loops

    for loop in project_training_loops(project):   # every file's loops, imported helpers inlined
        ...

Operation kinds: ``backward``, ``optimizer_step``, ``zero_grad``,
``scheduler_step``, ``clip``, ``unscale``, ``scaler_update``, ``eval_mode``,
``train_mode``, ``forward``, ``grad_scale`` (``p.grad /= k``), ``sync_flag``
(``model.require_backward_grad_sync = ...``). Delegated calls carry a
``framework`` (``accelerator.backward`` → "accelerate", distributed autograd →
"dist-autograd").

Records are frozen dataclasses and picklable; ``node`` fields hold ast nodes
only for loops built from the current file and are dropped in summaries (the
``loops`` summarizer). Cost: a file without ``backward`` in a loop's call tree
is not walked; each function's call tree is computed once per file.
"""

from trainaudit.model.loops.analysis import (
    LoopAnalysis,
    find_training_loops,
    is_training_loop,
    loop_analysis,
    may_train,
)
from trainaudit.model.loops.batch import batch_size_of, resolve_int
from trainaudit.model.loops.contexts import GradMode, contexts_at, grad_mode, grad_mode_at
from trainaudit.model.loops.patterns import (
    BACKWARD_CALL,
    LOOP_REQUIRES,
    LOOP_TRIGGERS,
    TRAINY_IMPORT,
    looks_like_accumulation_test,
)
from trainaudit.model.loops.records import (
    Accumulation,
    BatchSize,
    ExternalCall,
    FunctionOps,
    Guard,
    LoopNode,
    LossSite,
    Operation,
    OpKind,
    Site,
    TrainingLoop,
)
from trainaudit.model.loops.summaries import (
    LoopFileFacts,
    project_training_loops,
    summarize_loops,
    targets_gpu,
)

__all__ = [
    "BACKWARD_CALL",
    "LOOP_REQUIRES",
    "LOOP_TRIGGERS",
    "TRAINY_IMPORT",
    "Accumulation",
    "BatchSize",
    "ExternalCall",
    "FunctionOps",
    "GradMode",
    "Guard",
    "LoopAnalysis",
    "LoopFileFacts",
    "LoopNode",
    "LossSite",
    "OpKind",
    "Operation",
    "Site",
    "TrainingLoop",
    "batch_size_of",
    "contexts_at",
    "find_training_loops",
    "grad_mode",
    "grad_mode_at",
    "is_training_loop",
    "looks_like_accumulation_test",
    "loop_analysis",
    "may_train",
    "project_training_loops",
    "resolve_int",
    "summarize_loops",
    "targets_gpu",
]
