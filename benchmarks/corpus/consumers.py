"""Consumer parts (the loss) and the step body they close: move, unpack, forward, loss.

A consumer either shifts (compares ``logits[..., :-1, :]`` with ``labels[..., 1:]``)
or scores position t against label t. HF consumers hand ``labels=`` to a causal LM,
which always shifts inside; ``hf_renamed`` first renames pre-made ``shift_labels``.
``model_loss`` hands the targets to a project model whose forward computes the loss
(nanoGPT's ``model(x, y)``), shifting there or not as the twin says.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.corpus.models import logits_lines

CONSUMERS = ("inline_ce", "shift_vars", "criterion", "loss_helper", "aux_branch",
             "model_loss", "hf_labels", "hf_renamed")
HF_CONSUMERS = frozenset({"hf_labels", "hf_renamed"})
MOVES = ("none", "per_tensor", "per_tensor_kw", "dict_comp", "tuple_gen")

LOSS_HELPER = """\
import torch.nn.functional as F


def lm_loss(logits, labels, ignore_index=-100):
{body}"""

_HELPER_SHIFTED = """\
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                           ignore_index=ignore_index)
"""
_HELPER_UNSHIFTED = """\
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=ignore_index)
"""


@dataclass(frozen=True)
class StepNames:
    """How the step body names the model, the device and the criterion where it runs."""

    model: str = "model"
    device: str = "device"
    criterion: str = "criterion"


def needs_criterion(consumer: str) -> bool:
    """The consumer calls a ``nn.CrossEntropyLoss`` made elsewhere."""
    return consumer == "criterion"


def criterion_expr() -> str:
    """The criterion as the project makes it."""
    return "nn.CrossEntropyLoss(ignore_index=-100)"


def loss_helper_file(shifts: bool) -> str:
    """The text of ``losses.py`` (the ``loss_helper`` consumer)."""
    return LOSS_HELPER.format(body=_HELPER_SHIFTED if shifts else _HELPER_UNSHIFTED)


def _ce(shifts: bool, call: str) -> list[str]:
    if shifts:
        return [f"loss = {call}(logits[..., :-1, :].reshape(-1, logits.size(-1)), "
                "labels[..., 1:].reshape(-1))"]
    return [f"loss = {call}(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))"]


def loss_lines(consumer: str, body: str, shifts: bool, names: StepNames
               ) -> tuple[list[str], set[str]]:
    """Forward and loss, from ``ids`` and ``labels`` (or ``batch`` for ``hf_renamed``)."""
    model = names.model
    if consumer == "hf_labels":
        return [f"outputs = {model}(input_ids=ids, labels=labels)", "loss = outputs.loss"], set()
    if consumer == "hf_renamed":
        return ['batch["labels"] = batch.pop("shift_labels")', f"outputs = {model}(**batch)",
                "loss = outputs.loss"], set()
    if consumer == "model_loss":  # the model's forward scores the targets it is given
        return [f"logits, loss = {model}(ids, labels)"], set()
    if consumer == "aux_branch":
        forward = ["if USE_AUX:", f"    logits, aux_loss = {model}(ids, return_aux=True)",
                   "else:", f"    logits = {model}(ids)", "    aux_loss = 0.0"]
        return ([*forward, *_ce(shifts, "F.cross_entropy"), "loss = loss + 0.01 * aux_loss"],
                {"import torch.nn.functional as F"})
    forward = logits_lines(body, model)
    if consumer == "inline_ce":
        return [*forward, *_ce(shifts, "F.cross_entropy")], {"import torch.nn.functional as F"}
    if consumer == "criterion":
        return [*forward, *_ce(shifts, names.criterion)], set()
    if consumer == "loss_helper":
        return [*forward, "loss = lm_loss(logits, labels)"], {"from losses import lm_loss"}
    if consumer == "shift_vars":
        if not shifts:
            return [*forward, *_ce(False, "F.cross_entropy")], {"import torch.nn.functional as F"}
        return ([*forward, "shift_logits = logits[..., :-1, :].contiguous()",
                 "shift_labels = labels[..., 1:].contiguous()",
                 "loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), "
                 "shift_labels.view(-1))"], {"import torch.nn.functional as F"})
    raise ValueError(consumer)


def step_lines(consumer: str, body: str, shifts: bool, batch: str, move: str,
               names: StepNames) -> tuple[list[str], set[str]]:
    """The step body from ``batch`` to ``loss``: device move, unpack, forward, loss."""
    device = names.device
    lines: list[str] = []
    if move == "dict_comp":
        lines.append(f"batch = {{k: v.to({device}) for k, v in batch.items()}}")
    elif move == "tuple_gen":
        lines.append(f"batch = tuple(t.to({device}) for t in batch)")
    if consumer != "hf_renamed":
        if batch == "dict":
            lines += ['ids = batch["input_ids"]', 'labels = batch["labels"]']
        else:
            lines.append("ids, labels = batch")
    if move == "per_tensor":
        lines += [f"ids = ids.to({device})", f"labels = labels.to({device})"]
    elif move == "per_tensor_kw":
        lines.append(f"ids, labels = ids.to({device}, non_blocking=True), "
                     f"labels.to({device}, non_blocking=True)")
    loss, imports = loss_lines(consumer, body, shifts, names)
    return lines + loss, imports
