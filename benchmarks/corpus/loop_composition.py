"""The loop corpus (issue 17): one composition of loop, precision and mode parts, the rules
that say which fit together, and the ground truth of its twins.

Every composition has a *clean* twin (no TA202/TA203/TA303/TA502 bug) and a *bug* twin
that breaks exactly one rule, the composition's ``bug`` axis: the loss not divided by
the accumulation steps (TA202), the scheduler stepped on every micro-batch (TA203),
clipping before ``scaler.unscale_`` or with none at all (TA303), or an evaluation helper
that leaves the model in eval mode (TA502). One bug per twin keeps the truth exact and
tells which part a miss belongs to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LOSSES = ("inline", "crit_local", "crit_self", "crit_arg", "fn_same", "fn_other", "model_loss")
REDUCTIONS = ("mean", "sum_norm")
GATES = ("modulo", "counter", "accelerate", "deepspeed", "lightning")
SCALERS = ("none", "unscale_order", "unscale_missing")
CLIPS = ("none", "inline", "helper_same", "helper_other")
SCHEDULERS = ("none", "per_step", "per_epoch", "plateau", "onecycle")
EVALS = ("none", "train_after", "was_training", "try_finally", "context_manager")
SHAPES = ("plain", "epoch", "helper", "trainer")
BUGS = ("TA202", "TA203", "TA303", "TA502")
LOOP_CODES = BUGS
TWINS = ("clean", "bug")

AXES: dict[str, tuple[str, ...]] = {
    "loss": LOSSES, "reduction": REDUCTIONS, "gate": GATES, "scaler": SCALERS, "clip": CLIPS,
    "scheduler": SCHEDULERS, "evaluation": EVALS, "shape": SHAPES, "bug": BUGS,
}
# Frameworks that are not installed here: their compositions are checked, never run.
STATIC_ONLY_GATES = frozenset({"accelerate", "deepspeed", "lightning"})
# Gates where the framework divides the loss by the accumulation steps itself.
SELF_SCALING_GATES = frozenset({"accelerate", "deepspeed", "lightning"})
MANUAL_GATES = frozenset({"modulo", "counter"})
# A scheduler fed a metric reacts to what it is fed, not to a count of steps (the TA203
# page): stepping it per micro-batch is no TA203 bug.
COUNTING_SCHEDULERS = frozenset({"per_step", "per_epoch", "onecycle"})
EPOCH_SHAPES = frozenset({"epoch", "helper", "trainer"})


@dataclass(frozen=True)
class LoopComposition:
    """A choice of one part per axis of the loop corpus."""

    loss: str
    reduction: str
    gate: str
    scaler: str
    clip: str
    scheduler: str
    evaluation: str
    shape: str
    bug: str

    def parts(self) -> dict[str, str]:
        """Axis → part name."""
        return {k: str(v) for k, v in asdict(self).items()}

    def key(self) -> str:
        """A short stable name for folders and reports."""
        return "-".join(self.parts().values())

    def runnable(self) -> bool:
        """Every part runs on a CPU with only torch installed."""
        return self.gate not in STATIC_ONLY_GATES


BASELINE = LoopComposition(loss="inline", reduction="mean", gate="modulo", scaler="none",
                           clip="inline", scheduler="per_step", evaluation="train_after",
                           shape="epoch", bug="TA202")


def problems(c: LoopComposition) -> list[str]:
    """Why the parts do not fit together (empty when they do)."""
    out = []
    if c.loss == "crit_self" and c.shape not in ("trainer",) and c.gate != "lightning":
        out.append("a criterion on self lives in a class")
    if c.gate == "lightning":
        if c.shape != "trainer":
            out.append("a LightningModule is the class that trains")
        if c.loss in ("crit_local", "crit_arg"):
            out.append("Lightning calls training_step(batch, batch_idx): no criterion argument")
        if c.evaluation != "none":
            out.append("Lightning sets and restores the mode around validation itself")
        if c.scheduler in ("per_epoch", "plateau"):
            out.append("the Lightning part schedules per optimizer step")
    if c.gate in ("accelerate", "deepspeed") and c.shape not in ("plain", "epoch"):
        out.append("the framework loops are written inline in train()")
    if c.gate in STATIC_ONLY_GATES and (c.scaler != "none" or c.clip != "none"):
        out.append("the framework owns the loss scaler and clipping")
    if c.scheduler == "per_epoch" and c.shape not in EPOCH_SHAPES:
        out.append("a per-epoch scheduler needs an epoch loop")
    if c.scheduler == "per_epoch" and c.gate == "deepspeed":
        out.append("the DeepSpeed part steps its scheduler at the window boundary")
    if c.bug == "TA202" and c.gate in SELF_SCALING_GATES:
        out.append("the framework divides the loss by the accumulation steps itself")
    if c.bug == "TA203" and c.scheduler not in COUNTING_SCHEDULERS:
        out.append("TA203's bug needs a scheduler that counts steps")
    if c.bug == "TA203" and c.gate == "accelerate":
        out.append("a prepared scheduler steps only when accelerate syncs: no TA203 bug form")
    if c.bug == "TA303" and (c.scaler == "none" or c.clip == "none"):
        out.append("TA303's bug needs a GradScaler and clipping")
    if c.bug == "TA502" and c.evaluation == "none":
        out.append("TA502's bug needs an evaluation helper")
    return out


def truth(c: LoopComposition, twin: str) -> dict[str, Any]:
    """The ground truth of one twin: the loop codes expected (the bug's, or none)."""
    codes = [c.bug] if twin == "bug" else []
    return {"key": c.key(), "twin": twin, "codes": codes, "runnable": c.runnable(),
            "parts": c.parts()}
