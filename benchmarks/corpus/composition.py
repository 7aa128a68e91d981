"""One composition (a choice of every part), the rules that say which choices fit
together, and its ground truth.

The twins: the *bug* twin shifts at the producer and again at the loss (label
offset 2, TA102); the *clean* twin shifts once, either at the loss
(``clean_mode="loss"``: the producer returns the ids unshifted) or at the producer
(``clean_mode="producer"``: the loss does not shift). A causal LM scored with
``labels=`` always shifts inside, so its clean twin is ``"loss"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.corpus.consumers import CONSUMERS, HF_CONSUMERS, MOVES
from benchmarks.corpus.models import BODIES, HF_BODIES, PLACEMENTS
from benchmarks.corpus.producers import (
    ADVICE_WHEN_SINGLE,
    CONTAINERS,
    DICT_CONTAINERS,
    DIRECT_CONTAINERS,
    FORMULA_CODES,
    FORMULAS,
    SHIFT_ONLY,
    SOURCES,
    TENSORS,
    ProducerChoice,
)
from benchmarks.corpus.transports import LOADERS, WRAPPERS

LOOPS = ("plain", "epoch", "helper", "trainer", "lightning", "lightning_dm")
LIGHTNING_LOOPS = frozenset({"lightning", "lightning_dm"})
VALIDATIONS = ("none", "other_file")
CLEAN_MODES = ("loss", "producer")
TWINS = ("clean", "bug")
LABEL_CODES = ("TA101", "TA102", "TA103", "TA104", "TA105")

# Every axis of a composition with the parts it can take; the per-part table reads this.
AXES: dict[str, tuple[str, ...]] = {
    "source": SOURCES, "tensor": TENSORS, "formula": FORMULAS, "container": CONTAINERS,
    "loader": LOADERS, "wrapper": WRAPPERS, "move": MOVES, "body": BODIES,
    "placement": PLACEMENTS, "consumer": CONSUMERS, "loop": LOOPS, "validation": VALIDATIONS,
    "clean_mode": CLEAN_MODES,
}
# Parts that cannot run on this machine (no transformers, accelerate or lightning): static only.
STATIC_ONLY = {("body", b) for b in HF_BODIES} | {("consumer", c) for c in HF_CONSUMERS} | {
    ("wrapper", "accelerate"), ("loop", "lightning"), ("loop", "lightning_dm")}


@dataclass(frozen=True)
class Composition:
    """A choice of one part per axis."""

    source: str
    tensor: str
    formula: str
    container: str
    loader: str
    wrapper: str
    move: str
    body: str
    placement: str
    consumer: str
    loop: str
    validation: str
    clean_mode: str

    @property
    def producer(self) -> ProducerChoice:
        return ProducerChoice(self.source, self.tensor, self.formula, self.container)

    @property
    def batch(self) -> str:
        """The shape of one batch: ``"dict"`` or ``"tuple"``."""
        return "dict" if self.container in DICT_CONTAINERS else "tuple"

    def parts(self) -> dict[str, str]:
        """Axis → part name."""
        return {k: str(v) for k, v in asdict(self).items()}

    def key(self) -> str:
        """A short stable name for folders and reports."""
        return "-".join(self.parts().values())

    def runnable(self) -> bool:
        """Every part runs on a CPU with only torch and numpy installed."""
        return not any((axis, part) in STATIC_ONLY for axis, part in self.parts().items())


# The plainest composition: every part of it is one the flow model has long read. The
# "parts alone" table varies one axis of it at a time.
BASELINE = Composition(
    source="packed_stream", tensor="tensor", formula="clone_slice", container="map_dict",
    loader="inline", wrapper="plain", move="none", body="tensor", placement="none",
    consumer="inline_ce", loop="plain", validation="none", clean_mode="loss")


# Compositions with a name: the layout of the training code the review in SPEC §1 is
# about (a character tokenizer class, torch.tensor of its list, a factory of loaders,
# a model whose forward returns a tuple by flag, an auxiliary branch, a train_step
# helper, validation in another file), with the review's roll and with its fix.
NAMED = {
    "mm-rec-review-fix": Composition(
        source="char_class", tensor="tensor", formula="clone_slice", container="map_dict",
        loader="factory_tuple", wrapper="enumerate", move="per_tensor", body="flag",
        placement="to_device", consumer="aux_branch", loop="helper", validation="other_file",
        clean_mode="loss"),
    "mm-rec-review-roll": Composition(
        source="char_class", tensor="tensor", formula="roll_masked", container="map_dict",
        loader="factory_tuple", wrapper="enumerate", move="per_tensor", body="flag",
        placement="to_device", consumer="aux_branch", loop="helper", validation="other_file",
        clean_mode="producer"),
}


def problems(c: Composition) -> list[str]:
    """Why the parts do not fit together (empty when they do)."""
    out = []
    direct = c.container in DIRECT_CONTAINERS
    hf_body, hf_loss = c.body in HF_BODIES, c.consumer in HF_CONSUMERS
    if direct != (c.loader == "direct"):
        out.append("batch functions go with the direct loader and only with it")
    if c.container == "batch_fn" and c.wrapper != "plain":
        out.append("a batch function is called in a range loop")
    if (c.source == "randint") != (c.tensor == "native"):
        out.append("torch.randint makes tensors; the other sources make lists")
    if direct and c.wrapper == "accelerate":
        out.append("accelerate prepares DataLoaders")
    if c.move == "dict_comp" and c.batch != "dict":
        out.append("a dict comprehension moves dict batches")
    if c.move == "tuple_gen" and c.batch != "tuple":
        out.append("a tuple generator moves tuple batches")
    if hf_body != hf_loss:
        out.append("HF causal LMs are scored with labels= and only they are")
    if (c.body == "loss_inside") != (c.consumer == "model_loss"):
        out.append("a model that scores its targets is called with them, and only it")
    if c.consumer == "hf_renamed" and (c.batch != "dict" or c.move.startswith("per_tensor")):
        out.append("renaming shift_labels needs a dict batch moved whole")
    if c.consumer == "aux_branch" and c.body != "flag":
        out.append("the auxiliary branch needs a model with a return_aux flag")
    if c.formula in SHIFT_ONLY and c.clean_mode != "producer":
        out.append("a roll or a mask formula shifts at the producer")
    if hf_loss and c.clean_mode != "loss":
        out.append("a causal LM always shifts")
    if c.loop == "lightning_dm" and c.loader != "inline":
        out.append("a Lightning data module makes its own DataLoader")
    if c.loop in LIGHTNING_LOOPS and (c.wrapper != "plain" or c.move != "none" or direct
                                      or c.validation != "none" or c.placement != "none"):
        out.append("Lightning walks its loaders, moves batches and places the model itself")
    return out


def shifts(c: Composition, twin: str) -> tuple[int, int]:
    """(producer shift, loss shift) of a twin."""
    if twin == "bug":
        return 1, 1
    return (0, 1) if c.clean_mode == "loss" else (1, 0)


def truth(c: Composition, twin: str) -> dict[str, Any]:
    """The ground truth of one twin: label offset, the label codes expected, the parts."""
    producer, loss = shifts(c, twin)
    codes = set()
    if producer and loss:
        codes.add("TA102")
    elif c.formula in ADVICE_WHEN_SINGLE:
        codes.add(ADVICE_WHEN_SINGLE[c.formula])
    if c.formula in FORMULA_CODES:
        codes.add(FORMULA_CODES[c.formula])
    return {"key": c.key(), "twin": twin, "label_offset": producer + loss,
            "producer_shift": producer, "loss_shift": loss, "codes": sorted(codes),
            "runnable": c.runnable(), "parts": c.parts()}
