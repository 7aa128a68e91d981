"""What ``check`` misses on the loop corpus today, by the parts that cause it.

Each entry: (code, the parts a bug twin has) → why ``check`` misses that code there. The
measure report sorts every miss under the first entry whose parts the twin has; a miss
no entry explains is reported as UNKNOWN (a new defect, or an entry to add).
"""

from __future__ import annotations

KNOWN: list[tuple[str, dict[str, str], str]] = [
    ("TA202", {"loss": "crit_arg", "shape": "helper"},
     "the criterion is handed from main() through train() into train_step() of another file; "
     "the loss reader follows a criterion parameter one call up, not two across files "
     "(model/loops/bindings.py and arguments.py, being rewritten)"),
    ("TA202", {"loss": "crit_arg", "shape": "trainer"},
     "the criterion is handed to Trainer.fit(criterion) and on to self.train_epoch(criterion); "
     "a parameter of a method is not followed to the method's callers (bindings.py, "
     "arguments.py, being rewritten)"),
    ("TA203", {"gate": "lightning"},
     "Lightning's accumulate_grad_batches is not modelled: a scheduler stepped by hand in "
     "training_step runs on every micro-batch"),
    ("TA303", {"clip": "helper_other"},
     "clipping in a helper imported from another file: TA303 reads one file (the other "
     "developer's change to rules/grad_scaler.py)"),
    ("TA303", {"shape": "helper"},
     "the scaled backward is in train_step() of steps.py, the clip and scaler.step() in "
     "train.py: TA303 reads one file and finds no scaler.scale() in train.py"),
    ("TA502", {"evaluation": "try_finally"},
     "an early return inside the evaluation loop skips the model.train() after it on every "
     "run here, but statically a path restores (a loader shorter than the limit): only the "
     "probe sees that it never runs"),
]


def known_cause(parts: dict[str, str], code: str) -> str | None:
    """The known reason ``code`` is missed on a bug twin with these parts, if any."""
    for known_code, needs, reason in KNOWN:
        if known_code == code and all(parts.get(a) == p for a, p in needs.items()):
            where = ", ".join(f"{a}={p}" for a, p in needs.items())
            return f"{code} ({where}): {reason}"
    return None
