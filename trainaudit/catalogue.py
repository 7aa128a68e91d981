"""The rule catalogue (SPEC §4): codes, names, default severities and fix classes.

Codes are stable. A code listed here but with no implementation registered is
shown as *planned* by ``trainaudit rules`` and never reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainaudit.diagnostics import FixClass, Severity


@dataclass(frozen=True)
class RuleInfo:
    code: str
    name: str
    severity: Severity
    fix: FixClass | None
    summary: str
    # Advice: a choice often better made differently, not a bug or a weakness that holds
    # everywhere. Not in the default selection (as ruff's defaults hold only the rules
    # that are right everywhere); runs when selected (``ALL``, a code or a prefix).
    advice: bool = False

    @property
    def slug(self) -> str:
        """File stem of the rule page, e.g. ``TA102-double-label-shift``."""
        return f"{self.code}-{self.name}"


E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO  # noqa: E741
SAFE, CORR, FEAT = FixClass.SAFE, FixClass.CORRECTIVE, FixClass.FEATURE

CATALOGUE: tuple[RuleInfo, ...] = (
    RuleInfo("TA001", "syntax-error", E, None, "file does not parse"),
    RuleInfo("TA002", "unused-suppression", I, SAFE,
             "a `# trainaudit: ignore[...]` / `# noqa: TA...` that suppresses nothing"),
    RuleInfo("TA101", "circular-label-shift", E, CORR,
             "roll-made labels/targets whose wrapped position is trained on"),
    RuleInfo("TA102", "double-label-shift", E, CORR,
             "labels shifted where they are made and again at the loss "
             "(or passed pre-shifted to a model that shifts internally)"),
    RuleInfo("TA103", "roll-label-shift", I, SAFE,
             "a roll whose wrap is neutralised: works, but fragile; rewrite as slicing", advice=True),
    RuleInfo("TA104", "ignore-index-mismatch", E, CORR,
             "the value used to mask labels is not what the loss ignores"),
    RuleInfo("TA105", "missing-label-shift", E, CORR,
             "logits at position t scored against the token at position t"),
    RuleInfo("TA201", "no-gradient-accumulation", W, FEAT,
             "optimizer stepped every micro-batch at a small batch size, no accumulation", advice=True),
    RuleInfo("TA202", "accumulated-loss-not-scaled", E, CORR,
             "accumulation without dividing the loss (or grads) by the steps"),
    RuleInfo("TA203", "per-micro-batch-update", E, CORR,
             "scheduler.step / clip / zero_grad run every micro-batch while optimizer.step is gated"),
    RuleInfo("TA204", "missing-zero-grad", E, CORR,
             "backward + step in a loop, grads never cleared"),
    RuleInfo("TA205", "ddp-accumulation-without-no-sync", W, CORR,
             "DDP + accumulation with an all-reduce on every micro-batch"),
    RuleInfo("TA206", "zero-grad-before-step", E, CORR,
             "zero_grad between backward and step wipes the gradients"),
    RuleInfo("TA301", "no-mixed-precision", I, FEAT,
             "training forward without autocast and without delegated precision", advice=True),
    RuleInfo("TA302", "deprecated-amp-api", W, SAFE,
             "torch.cuda.amp.* / torch.cpu.amp.*, any import spelling"),
    RuleInfo("TA303", "clip-before-unscale", E, CORR,
             "clipping scaled gradients: no scaler.unscale_(opt) before clip"),
    RuleInfo("TA304", "grad-scaler-bypassed", E, CORR,
             "a scaler exists but backward/step skip it, or update() is missing"),
    RuleInfo("TA305", "fp16-without-grad-scaler", W, CORR, "float16 autocast with no scaler"),
    RuleInfo("TA306", "grad-scaler-with-bf16", I, SAFE,
             "scaler with bfloat16 autocast: not needed", advice=True),
    RuleInfo("TA401", "no-activation-checkpointing", I, FEAT,
             "a stack of blocks run without checkpointing in a long-sequence model", advice=True),
    RuleInfo("TA402", "checkpoint-use-reentrant-unset", W, CORR,
             "checkpoint(...) without use_reentrant="),
    RuleInfo("TA403", "checkpointing-with-kv-cache", W, CORR,
             "gradient checkpointing on with use_cache=True"),
    RuleInfo("TA501", "eval-without-no-grad", W, SAFE,
             "evaluation forward passes that build autograd graphs"),
    RuleInfo("TA502", "eval-mode-not-restored", E, CORR,
             "model.eval() in the loop's call tree and never model.train() again"),
    RuleInfo("TA503", "loss-tensor-accumulated", W, SAFE,
             "total += loss keeps every step's graph alive"),
    RuleInfo("TA504", "no-gradient-clipping", I, FEAT, "no clipping anywhere in the loop", advice=True),
    RuleInfo("TA505", "weight-decay-on-norm-and-bias", I, None,
             "decay applied to all parameters, norms and biases included", advice=True),
)

BY_CODE: dict[str, RuleInfo] = {info.code: info for info in CATALOGUE}
BY_NAME: dict[str, RuleInfo] = {info.name: info for info in CATALOGUE}


def lookup(code_or_name: str) -> RuleInfo | None:
    """Find a rule by code (``TA102``, any case) or by name (``double-label-shift``)."""
    return BY_CODE.get(code_or_name.upper()) or BY_NAME.get(code_or_name.lower())
