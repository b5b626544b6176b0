"""`Method` and its registry: what a method hands the trainer, a module that knows its data, loss and evaluation.

The trainer owns the loop (order of samples, devices, precision, optimiser, checkpoints,
processes); a method owns what is specific to a paper:

    class MyMethod(Method):
        def __len__(self): ...                      # training samples per epoch
        def train_sample(self, index, rng): ...     # one prepared sample (CPU, no grad)
        def forward(self, batch): ...               # -> (loss, {"name": float, ...})
        def evaluate(self): ...                     # -> {"dice_base": ..., ...}

Only parameters with `requires_grad` train and are saved in checkpoints; frozen parts are
rebuilt from the config when a run resumes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from samkit.errors import bad_argument, call_with


class Method(nn.Module):
    """Base class of every trainable method (see the module docstring)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def train_sample(self, index: int, rng: np.random.Generator) -> Any:
        """Sample `index` of the training set, with its random prompts drawn from `rng`.

        `rng` depends only on (seed, epoch, index), so the sample is the same whatever the
        number of processes or whether the run was resumed.
        """
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> Any:
        """Samples -> the batch `forward` takes (default: the list itself)."""
        return samples

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one micro-batch (a mean over its samples) and values to log."""
        raise NotImplementedError

    global_step: int = 0  # set by the trainer before each optimiser step (alternating methods read it)
    epoch: int = 0  # set by the trainer before each epoch's samples are drawn (0-based)

    def before_optimizer_step(self) -> None:
        """Called after the backward passes of a step, before clipping and the optimiser step.

        A method that optimises in levels (CPC-SAM's bi-level loop) sets `p.grad = None` here
        for the parameters that must not move in this step: optimisers skip them entirely.
        """

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Evaluation metrics (called in eval mode, on the first process only)."""
        return {}

    def describe(self) -> str:
        """One line for the log: what trains."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return f"{type(self).__name__}: {trainable:,} trainable of {total:,} parameters"


METHODS: dict[str, Callable[..., Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a Method buildable from a config's `method: name`."""
    def register(cls: type[Method]) -> type[Method]:
        METHODS[name] = cls
        return cls
    return register


# The kit's own methods, imported when a config first names one: importing one method does not
# load the others (OpenWorldSAM pulls in pandas and scipy, SSPrompt the text encoder).
KIT_METHODS = {
    "finetune": "samkit.methods.finetune",
    "box_generator": "samkit.methods.box_generator",
    "cpc": "samkit.methods.cpc",
    "prosam": "samkit.methods.prosam",
    "ssprompt": "samkit.methods.ssprompt",
    "openworld": "samkit.methods.openworld",
    "tinysam_pretrain": "samkit.methods.tinysam_pretrain",
    "text_tinysam": "samkit.methods.text_tinysam_pretrain",
}


def build_method(name: str, args: dict[str, Any], device: torch.device) -> Method:
    """The method registered as `name`, built with `args` from the config."""
    if name not in METHODS and name in KIT_METHODS:
        importlib.import_module(KIT_METHODS[name])  # registers it
    if name not in METHODS:
        raise bad_argument("method", f"one of {sorted(set(METHODS) | set(KIT_METHODS))}", name)
    return call_with(METHODS[name], {**args, "device": device}, f"method_args of {name!r}")
