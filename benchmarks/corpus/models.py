"""Model parts: what the model is (``model.py``), how it is placed, and how logits are read.

Project bodies are tiny position-wise modules (embedding → tanh → head), so a CPU
runs a step in milliseconds; they return a tensor, a tuple, a dict, or a tensor
or a tuple by flag (``return_aux=True``), or compute the loss of the targets they
are given (``loss_inside``, nanoGPT's ``model(x, y)``). HF bodies are causal LMs made with
``from_pretrained``, ``from_config`` or ``getattr(transformers, cfg["model_class"])``:
static only (``transformers`` is not a dependency).
"""

from __future__ import annotations

BODIES = ("tensor", "tuple", "dict", "flag", "loss_inside", "hf_pretrained", "hf_config",
          "hf_getattr", "hf_table")
HF_BODIES = frozenset({"hf_pretrained", "hf_config", "hf_getattr", "hf_table"})
PLACEMENTS = ("none", "to_device", "compile_guarded", "ddp_guarded")

_MODULE = """\
import torch
import torch.nn.functional as F
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab_size, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids{params}):
        hidden = torch.tanh(self.mix(self.embed(input_ids)))
        logits = self.head(hidden)
{returns}"""

_RETURNS = {
    "tensor": ("", "        return logits\n"),
    "tuple": ("", "        return logits, hidden\n"),
    "dict": ("", '        return {"logits": logits, "hidden": hidden}\n'),
    "loss_inside_shifted": (
        ", targets=None",
        "        if targets is None:\n"
        "            return logits, None\n"
        "        loss = F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.size(-1)),\n"
        "                               targets[:, 1:].reshape(-1), ignore_index=-100)\n"
        "        return logits, loss\n"),
    "loss_inside": (
        ", targets=None",
        "        if targets is None:\n"
        "            return logits, None\n"
        "        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),\n"
        "                               ignore_index=-100)\n"
        "        return logits, loss\n"),
    "flag": (", return_aux=False",
             "        if return_aux:\n"
             "            return logits, hidden.pow(2).mean()\n"
             "        return logits\n"),
}

_HF = {
    "hf_pretrained": """\
from transformers import AutoModelForCausalLM


def build_model():
    return AutoModelForCausalLM.from_pretrained("gpt2")
""",
    "hf_config": """\
from transformers import AutoConfig, AutoModelForCausalLM


def build_model():
    config = AutoConfig.for_model("gpt2", n_layer=2, n_embd=64, n_head=2)
    return AutoModelForCausalLM.from_config(config)
""",
    "hf_getattr": """\
import transformers

CONFIG = {"model_class": "GPT2LMHeadModel", "checkpoint": "gpt2"}


def build_model(cfg=CONFIG):
    model_class = getattr(transformers, cfg["model_class"])
    return model_class.from_pretrained(cfg["checkpoint"])
""",
    "hf_table": """\
from transformers import GPT2LMHeadModel, LlamaForCausalLM

MODEL_CLASSES = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}
CONFIG = {"arch": "gpt2", "checkpoint": "gpt2"}


def build_model(cfg=CONFIG):
    return MODEL_CLASSES[cfg["arch"]].from_pretrained(cfg["checkpoint"])
""",
}


def model_file(body: str, loss_shifts: bool) -> str:
    """The text of ``model.py``; ``loss_shifts`` says whether a loss inside the model shifts."""
    if body in HF_BODIES:
        return _HF[body]
    params, returns = _RETURNS[f"{body}_shifted" if body == "loss_inside" and loss_shifts
                               else body]
    return _MODULE.format(params=params, returns=returns)


def construct(body: str) -> tuple[str, str]:
    """The import and the expression that make the model."""
    if body in HF_BODIES:
        return "from model import build_model", "build_model()"
    return "from model import TinyLM", "TinyLM(vocab_size=VOCAB)"


def placement_lines(placement: str, device: str = "device") -> tuple[list[str], set[str]]:
    """Lines that place ``model`` (module level of a function), and the imports they need."""
    if placement == "to_device":
        return [f"model = model.to({device})"], set()
    if placement == "compile_guarded":
        return ["if USE_COMPILE:", "    model = torch.compile(model)"], set()
    if placement == "ddp_guarded":
        return (["if dist.is_available() and dist.is_initialized():", "    model = DDP(model)"],
                {"import torch.distributed as dist",
                 "from torch.nn.parallel import DistributedDataParallel as DDP"})
    return [], set()


def logits_lines(body: str, model: str, ids: str = "ids") -> list[str]:
    """Lines that bind ``logits`` from a forward pass of a project body."""
    if body == "tuple":
        return [f"logits, _hidden = {model}({ids})"]
    if body == "dict":
        return [f'logits = {model}({ids})["logits"]']
    return [f"logits = {model}({ids})"]
