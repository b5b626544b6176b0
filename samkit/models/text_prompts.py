"""A frozen "text prompt encoder" for SAM: class names -> 256-d semantic prompt tokens.

SAM's released model has no text prompt encoder, and SSPrompt needs one: its default semantic
prompts are z_c^T = Encoder^T(name of class c) (the paper's Eq. 2). This module builds one from
two frozen parts:

1. a pre-trained text encoder (`samkit.models.text.TextEncoder`: MiniLM offline, CLIP in `full`),
   which maps a class name to a unit vector (384-d for MiniLM);
2. a linear projection from that vector to SAM's prompt space (256-d), *fitted once* with SAM
   frozen, on labelled images that the experiment never uses, so that a class name's token
   already points the mask decoder at that class.

How the projection is fitted (`samkit.methods.ssprompt.fit_text_prompts`): for each fitting
image, the token of every class name, together with the default spatial prompts (a grid of
clicks), goes through SAM's frozen mask decoder and gives that class's mask logits; pixel-wise
cross-entropy over the classes (the loss of SSPrompt's Eq. 9) trains the projection and nothing
else. This stands in for the pre-training of SEEM's text prompt encoder on segmentation data.

With a handful of class names, a linear map can give each name any token it likes, so the text
encoder's job here is to *name* the classes; with many names (COCO's 133 in the full recipe)
the map is shared, and names it never saw (Cityscapes') get tokens through it.

Once fitted the projection is cached as safetensors under `$SAMKIT_CACHE/text_prompts/`, keyed
by everything that determines it (SAM's weights, the text encoder, the spatial prompts, the
fitting data and recipe), and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from samkit.atomic import atomic_path
from samkit.checkpoints import CheckpointError, cache_dir
from samkit.errors import bad_argument
from samkit.models.text import TextEncoder


class TextPromptEncoder(nn.Module):
    """Class names -> (C, token_dim) prompt tokens: a frozen TextEncoder, then a linear projection.

    text_encoder: a `TextEncoder` name ("minilm", "clip", "clip:<repo or folder>").
    The projection starts random; `samkit.methods.ssprompt.fit_text_prompts` fits it and
    `load`/`save` keep it. Only the projection is a parameter (the text model is not a submodule).
    """

    def __init__(self, text_encoder: str = "minilm", token_dim: int = 256,
                 device: str | torch.device = "cpu"):
        super().__init__()
        if not isinstance(token_dim, int) or token_dim < 1:
            raise bad_argument("token_dim", "a positive int", token_dim)
        self.text = TextEncoder(text_encoder, device=device)
        self.projection = nn.Linear(self.text.dim, token_dim).to(self.text.device)

    def text_vectors(self, class_names: Sequence[str]) -> torch.Tensor:
        """The frozen text encoder's (C, text_dim) vectors, without autograd."""
        return self.text.encode(list(class_names)).to(self.projection.weight)

    def forward(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, token_dim) tokens; autograd reaches the projection only."""
        return self.projection(self.text_vectors(class_names))

    def save(self, path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
        """Write the projection (and how it was made, as JSON metadata) atomically."""
        tensors = {name: value.detach().cpu().contiguous() for name, value in self.projection.state_dict().items()}
        with atomic_path(path) as temp:
            save_file(tensors, str(temp), metadata={"text_encoder": self.text.name,
                                                    "recipe": json.dumps(metadata, sort_keys=True, default=str)})
        return Path(path)

    def load(self, path: str | os.PathLike) -> TextPromptEncoder:
        """Read a projection written by `save`; CheckpointError if it does not fit this encoder."""
        try:
            state = load_file(str(path))
            self.projection.load_state_dict(state)
        except (SafetensorError, OSError, RuntimeError, ValueError) as error:  # missing, corrupt, another shape
            raise CheckpointError(f"{path}: not a text prompt projection for {self.text.name} "
                                  f"({type(error).__name__}: {error})") from error
        self.projection.to(self.text.device)
        return self


def text_prompt_cache_path(recipe: dict[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Where the projection fitted with `recipe` (a JSON-able dict of everything that decides it) lives."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(root or cache_dir() / "text_prompts") / f"{digest}.safetensors"


__all__ = ["TextPromptEncoder", "text_prompt_cache_path"]
