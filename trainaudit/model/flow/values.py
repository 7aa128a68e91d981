"""The abstract values of the flow model: what an expression may be, as far as it is known.

Few and explicit. ``Tokens`` is a token tensor with its *shift* along the sequence axis
relative to the stream it came from, a roll's *wrap* and the values that *mask* positions;
``Logits`` are a model's outputs, aligned with the tokens the model was fed; ``Record`` is a
dict / tuple / list / dataclass of values; the rest name objects the interpreter can call
(functions, classes, instances, loaders, loss functions, HF models). ``Opaque`` is an
unknown value *with an identity* (two reads of the same unknown are the same stream);
``UNKNOWN`` has none. Every value is frozen and hashable: values are memo keys.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from trainaudit.diagnostics import Span


@dataclass(frozen=True)
class Site:
    """A place in a checked file, with its source text (for messages and fixes)."""

    path: str
    span: Span
    text: str = ""


class Value:
    """Base of the abstract values."""

    __slots__ = ()


@dataclass(frozen=True)
class Unknown(Value):
    """Nothing is known, not even identity (a budget ran out, an unsupported form)."""


UNKNOWN = Unknown()


@dataclass(frozen=True)
class Opaque(Value):
    """An unknown value with an identity: a parameter, an unknown call's result, a key or
    attribute of another opaque value. ``key`` is structural, so the same access path in
    the same context is the same value."""

    key: tuple[object, ...]

    def child(self, *access: object) -> Opaque:
        return Opaque((*self.key, *access))


@dataclass(frozen=True)
class Const(Value):
    """A literal: int, str, bool, float or None."""

    value: object


@dataclass(frozen=True)
class MaskValue:
    """A value written into label positions, or a loss's ignore index: a number, or a
    named value known only as a real token id (a tokenizer's ``pad_token_id``)."""

    number: int | None = None
    name: str | None = None
    token_id: bool = False  # a real token id (>= 0), e.g. a pad id

    @property
    def known(self) -> bool:
        return self.number is not None or self.name is not None

    def describe(self) -> str:
        return str(self.number) if self.number is not None else (self.name or "?")

    def matches(self, other: MaskValue) -> bool | None:
        """True / False where the two are comparable, None where it is unknown."""
        if self.number is not None and other.number is not None:
            return self.number == other.number
        if self.name is not None and self.name == other.name:
            return True
        for a, b in ((self, other), (other, self)):
            if a.number is not None and a.number < 0 and b.token_id:
                return False  # a token id is never a negative ignore value
        return None


def constant_key_of(value: Value) -> object | None:
    """A value usable as a record key: a str or int constant."""
    if isinstance(value, Const) and isinstance(value.value, str | int) \
            and not isinstance(value.value, bool):
        return value.value
    return None


def mask_of(value: Value) -> MaskValue | None:
    """A value read as a mask or ignore value: an int literal, or an unknown whose access
    path names it (``tokenizer.pad_token_id``: a real token id)."""
    if isinstance(value, Const) and type(value.value) is int:
        return MaskValue(number=value.value)
    if isinstance(value, Opaque) and value.key and isinstance(value.key[-1], str):
        name = value.key[-1]
        return MaskValue(name=name, token_id="pad" in name.lower())
    return None


@dataclass(frozen=True)
class Producer:
    """Where a data-side shift (or roll) was written: what a message names and a fix edits."""

    kind: str  # roll | slice | pad | cat | slice-assign | fill-assign
    site: Site  # the value expression (the finding's span)
    input_text: str | None  # the unshifted tensor's source, e.g. ``input_ids``
    lib: str = "torch"
    roll_shift: int | None = None
    roll_dims: int | None = None
    fix_form: str = ""  # "assign-roll": the roll is a whole right-hand side
    helper_lines: tuple[tuple[int, int], ...] = ()  # statements that complete the shift
    var: str | None = None  # the name the labels are assigned to, where one is

    def named(self) -> str:
        """How a message names the labels: their variable, else the expression."""
        return self.var or self.site.text


@dataclass(frozen=True)
class ShiftStep:
    """One shift along the sequence axis: where, by how much, and who wrote it."""

    amount: int
    site: Site
    producer: Producer | None = None  # None: a consumer-side slice (``labels[..., 1:]``)
    internal: bool = False  # a model that shifts inside its forward


@dataclass(frozen=True)
class Neutralizer:
    """What keeps a roll's wrapped position out of the loss."""

    kind: str  # assign | slice | mask | pre-masked
    site: Site
    value: MaskValue = MaskValue()
    statement_lines: tuple[int, int] | None = None  # a statement a fix may delete


@dataclass(frozen=True)
class Wrap:
    """A roll's wrapped position (the last one for a left roll)."""

    roll: Site
    neutralizer: Neutralizer | None = None


@dataclass(frozen=True)
class MaskMark:
    """Positions set to ``value`` so a loss skips them (a tail, pads, a condition)."""

    value: MaskValue
    site: Site
    kind: str  # tail | head | pad | cond
    statement_lines: tuple[int, int] | None = None


@dataclass(frozen=True)
class Trim:
    """A slice that dropped a tensor's last position (``ids[:, :-1]``): where."""

    site: Site


@dataclass(frozen=True)
class Stream:
    """The identity of a token sequence: tensors of one stream differ only by shift."""

    key: tuple[object, ...]


@dataclass(frozen=True)
class Tokens(Value):
    """A token tensor: element ``i`` (along the sequence axis) is token ``i + shift`` of
    ``stream``. ``ndim`` where known (a data set item is 1-D; collation adds a batch axis)."""

    stream: Stream
    steps: tuple[ShiftStep, ...] = ()
    ndim: int | None = None
    wrap: Wrap | None = None
    masks: tuple[MaskMark, ...] = ()
    trail: tuple[Site, ...] = ()  # the way the value went: returns, keys, loaders, calls
    tail_zeroed: bool = False  # a 0/1 loss mask whose last position is zeroed
    made: Site | None = None  # the copy (``ids.clone()``) this tensor was made by, if one
    trimmed: Trim | None = None  # its last position was sliced off (``ids[:, :-1]``)
    # Shaped like the stream but holding this fill value, not tokens (``full_like(ids,
    # -100)``), until a slice of the stream is written into it.
    blank: MaskValue | None = None

    @property
    def shift(self) -> int:
        return sum(step.amount for step in self.steps)

    def moved(self, site: Site) -> Tokens:
        """The same tensor, having passed ``site`` (kept short)."""
        if self.trail and (self.trail[-1].path, self.trail[-1].span) == (site.path, site.span):
            return self
        return replace(self, trail=(*self.trail, site)[-8:])

    def with_ndim(self, ndim: int | None) -> Tokens:
        return self if ndim == self.ndim else replace(self, ndim=ndim)


@dataclass(frozen=True)
class Logits(Value):
    """Model outputs aligned with ``inputs``: position ``i`` is the prediction made after
    ``inputs[i + start]``. ``internal_shift``: calling the model with labels shifts them."""

    inputs: Tokens
    start: int = 0
    ndim: int | None = None


@dataclass(frozen=True)
class LossValue(Value):
    """The result of a loss sink (``reduction="none"`` per-token losses may be masked)."""

    sink: Site
    per_token: bool = False


@dataclass(frozen=True)
class Record(Value):
    """A dict, tuple, list or object of values; ``items`` keyed by str or int."""

    kind: str  # dict | tuple | list | object
    items: tuple[tuple[object, Value], ...]
    # An unknown record some keys were written into (``batch = tokenizer.pad(...)``;
    # ``batch["labels"] = ...``): the other keys are still the unknown's.
    base: Opaque | None = None

    def get(self, key: object) -> Value | None:
        for k, v in self.items:
            if k == key:
                return v
        return self.base.child("key", key) if self.base is not None else None

    def set(self, key: object, value: Value) -> Record:
        kept = tuple((k, v) for k, v in self.items if k != key)
        return Record(self.kind, (*kept, (key, value)), self.base)

    def without(self, key: object) -> Record:
        return Record(self.kind, tuple((k, v) for k, v in self.items if k != key), self.base)

    def values(self) -> list[Value]:
        return [v for _, v in self.items]


@dataclass(frozen=True)
class ListOf(Value):
    """A homogeneous sequence of ``element`` (a comprehension, a batch of items)."""

    element: Value
    origin: Value | None = None  # what it enumerates (``enumerate(loader)``)


@dataclass(frozen=True)
class OneOf(Value):
    """One of several values (branches joined); at most ``MAX_OPTIONS`` of them."""

    options: tuple[Value, ...]


MAX_OPTIONS = 4


@dataclass(frozen=True)
class Ref:
    """A definition in a checked module: ``(module name, dotted path in the file)``."""

    module: str
    qualname: str


@dataclass(frozen=True)
class FunctionValue(Value):
    """A checked function; for a nested one (a closure), ``free`` binds the names it reads
    from its enclosing function to their values where it was made."""

    ref: Ref
    free: tuple[tuple[str, Value], ...] = ()


@dataclass(frozen=True)
class ClassValue(Value):
    ref: Ref


@dataclass(frozen=True)
class Instance(Value):
    """An object of a checked class; ``attrs`` as its ``__init__`` left them."""

    cls: Ref
    attrs: tuple[tuple[str, Value], ...] = ()
    identity: tuple[object, ...] = ()

    def attr(self, name: str) -> Value | None:
        for k, v in self.attrs:
            if k == name:
                return v
        return None


@dataclass(frozen=True)
class BoundMethod(Value):
    function: Ref
    receiver: Value


@dataclass(frozen=True)
class Partial(Value):
    function: Value
    args: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()


@dataclass(frozen=True)
class Library(Value):
    """A name outside the checked tree (``torch.roll``, ``transformers.Trainer``)."""

    qualname: str


@dataclass(frozen=True)
class Arguments(Value):
    """An ``argparse`` parser and the defaults of the options added so far."""

    defaults: tuple[tuple[object, Value], ...]


@dataclass(frozen=True)
class LossFunction(Value):
    """A cross-entropy / NLL criterion: ``nn.CrossEntropyLoss(ignore_index=...)``."""

    ignore: MaskValue
    per_token: bool = False
    site: Site | None = None


@dataclass(frozen=True)
class CausalLM(Value):
    """A Hugging Face ``*ForCausalLM``: given ``labels=``, it shifts them inside."""

    site: Site


@dataclass(frozen=True)
class Loader(Value):
    """A data loader: a batch is ``collate([dataset[i], ...])``."""

    dataset: Value
    collate: Value | None
    site: Site
    call: ast.Call | None = field(default=None, compare=False, hash=False)
    batch_size: Value | None = None


def join(a: Value, b: Value) -> Value:
    """The value of a name after two paths that gave ``a`` and ``b``."""
    if a == b:
        return a
    options: list[Value] = []
    for value in (a, b):
        for option in value.options if isinstance(value, OneOf) else (value,):
            if option not in options:
                options.append(option)
    # An unknown alternative stays one option among the others: what the known ones
    # prove is not erased by a path the model cannot read (a tuple on one branch).
    if len(options) > MAX_OPTIONS:
        return UNKNOWN
    return OneOf(tuple(options))


def join_all(values: Iterable[Value]) -> Value:
    """The join of several values (UNKNOWN for none)."""
    result: Value | None = None
    for value in values:
        result = value if result is None else join(result, value)
    return result if result is not None else UNKNOWN


def options_of(value: Value) -> tuple[Value, ...]:
    return value.options if isinstance(value, OneOf) else (value,)
