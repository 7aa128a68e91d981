"""What kind of object a training script holds: read from what built it (or the type a
parameter is annotated with), else from how it is used, and only last from the names it
has (``trainaudit.model.objects.model``)."""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["optimizer", "scheduler", "scaler", "model", "criterion", ""]

# Wrappers by short name too: imported under other names (``DDP``), or from packages the
# qualified table does not list (``fairscale``'s FSDP, ``fully_shard``).
DDP_WRAPPERS = frozenset({"DistributedDataParallel", "DDP"})
FSDP_WRAPPERS = frozenset({"FullyShardedDataParallel", "FSDP", "fully_shard"})
WRAPPER_NAMES = DDP_WRAPPERS | FSDP_WRAPPERS | {"DataParallel", "compile", "get_peft_model"}
OPTIMIZER_CLASSES = frozenset({"AdamW", "Adam", "SGD", "Adafactor", "Lion", "RMSprop", "Adagrad",
                                "Adamax", "NAdam", "RAdam", "LBFGS", "SparseAdam", "Adadelta",
                                "ASGD", "Rprop", "Muon", "ZeroRedundancyOptimizer", "LAMB", "Lamb"})
# Names, only for objects nothing else tells (see the module docstring).
OPTIMIZER_NAME = re.compile(r"optim|^opt(_|\d|$)|_opt$|^opts?$", re.IGNORECASE)
SCHEDULER_NAME = re.compile(r"(^|_)(lr_?)?sched(uler)?s?$|^lr_sched|^lr$|_lr$|warmup", re.IGNORECASE)
MODEL_NAME = re.compile(r"model|^net$|network|^module$|^engine$|_engine$|^policy$", re.IGNORECASE)
# Functions that build what they are named for (``build_scheduler(opt, cfg)``).
_FACTORIES = ("build_", "create_", "make_", "get_", "load_", "init_", "setup_")
# Objects with a model's methods (``trainer.train()``) that are none of the kinds.
NEITHER = ("Trainer", "Accelerator", "Fabric", "Tokenizer", "Dataset", "DataLoader", "Logger")
_NOT_MODELS = tuple(f"{c}.{m}" for c in ("Tokenizer", "TokenizerFast", "Config", "Processor")
                    for m in ("from_pretrained", "from_config"))
# Methods only a model (among the kinds) has.
MODEL_METHODS = frozenset({"parameters", "named_parameters", "eval", "train", "forward",
                            "modules", "named_modules", "children", "load_state_dict"})
# The methods the object model records on an object: what tells its kind, and a scaler's.
OBJECT_METHODS = MODEL_METHODS | {"step", "zero_grad", "add_param_group", "unscale_", "scale", "update"}
# How the callables that build schedulers end (``OneCycleLR``, ``get_scheduler``,
# ``get_linear_schedule_with_warmup``): only these calls are asked what they build.
SCHEDULER_SUFFIXES = ("LR", "Scheduler", "Schedulers", "Plateau", "Restarts", "scheduler", "warmup")


def kind_of_maker(maker: str) -> Kind:
    """What a call of ``maker`` (a qualified name) builds, where its name says."""
    lowered, last = maker.lower(), maker.rsplit(".", 1)[-1]
    if last.endswith("GradScaler"):
        return "scaler"
    if "pipeline" in lowered:
        return ""
    factory = last.lower().startswith(_FACTORIES) and "sched" in last.lower() and "optim" not in last.lower()
    if ("lr_scheduler" in lowered or "schedule_with_warmup" in lowered or factory
            or last.endswith(("LR", "Scheduler", "Schedulers", "LROnPlateau"))
            or last in ("get_scheduler", "lr_schedulers")):
        return "scheduler"
    if "optim" in lowered or last in OPTIMIZER_CLASSES:
        return "optimizer"
    if last.endswith("Loss") or maker.startswith("torch.nn.functional."):
        return "criterion"
    if (maker.startswith("torch.nn.") and last[:1].isupper()) or (
            last in ("from_pretrained", "from_config") and not maker.endswith(_NOT_MODELS)):
        return "model"
    return ""


def kind_by_name(name: str, has_calls: bool) -> Kind:
    if not has_calls:
        return ""
    if "scaler" in name.lower():
        return "scaler"
    if SCHEDULER_NAME.search(name):
        return "scheduler"
    if OPTIMIZER_NAME.search(name):
        return "optimizer"
    if MODEL_NAME.search(name):
        return "model"
    return ""
