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
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from samkit.atomic import atomic_path
from samkit.checkpoints import CheckpointError, cache_dir
from samkit.errors import bad_argument
from samkit.models.base import ImageEmbedding, SamAdapter, Size
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

    @torch.no_grad()
    def match_strength(self, class_names: Sequence[str], reference: torch.Tensor) -> None:
        """Scale the projection so the names' tokens are as strong (mean norm) as `reference`'s rows:
        a freshly initialised Linear makes tokens ~30x weaker than a click's."""
        gain = reference.norm(dim=1).mean() / self(class_names).norm(dim=1).mean()
        self.projection.weight.mul_(gain)
        self.projection.bias.mul_(gain)

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


# ---- prompting SAM with a class token and a grid of clicks (SSPrompt's Eq. 2 / 8) ----------
def point_grid(n: int) -> np.ndarray:
    """(n, 2) click positions (x, y) as fractions of the image: a sqrt(n) x sqrt(n) grid of cell centres."""
    side = math.isqrt(n) if isinstance(n, int) and n > 0 else 0
    if side * side != n:
        raise bad_argument("spatial_points", "a square number (a grid of points, e.g. 100)", n)
    centres = (np.arange(side) + 0.5) / side
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def click_tokens(adapter: SamAdapter, fractions: torch.Tensor, input_size: Size) -> torch.Tensor:
    """Z^S = Encoder^S(X^S): positive clicks at `fractions` (N, 2) of an image that fills `input_size`
    of SAM's input frame, through SAM's prompt encoder -> (N + extra, D); SAM appends a padding
    token when no box is given. Differentiable in `fractions` (VSPL optimises them): the clicks are
    placed in the input frame directly, since mapping original pixels there goes through numpy."""
    height, width = input_size
    scale = torch.tensor([width, height], dtype=torch.float32, device=fractions.device)
    labels = torch.ones(fractions.shape[0], dtype=torch.int64)
    sparse, _ = adapter.prompt_tokens(points=fractions * scale, labels=labels)
    return sparse[0]


class DefaultClicks:
    """Z_default^S: the (frozen) tokens of positive clicks at `fractions` of an image, computed once
    per input size, as `size -> (N + extra, D)`."""

    def __init__(self, adapter: SamAdapter, fractions: np.ndarray):
        self.adapter, self.fractions = adapter, torch.as_tensor(fractions, device=adapter.device)
        self._tokens: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, input_size: Size) -> torch.Tensor:
        size = (int(input_size[0]), int(input_size[1]))
        if size not in self._tokens:
            with torch.no_grad():
                self._tokens[size] = click_tokens(self.adapter, self.fractions, size)
        return self._tokens[size]


def class_mask_logits(adapter: SamAdapter, embedding: ImageEmbedding, semantic: torch.Tensor,
                      spatial: torch.Tensor) -> torch.Tensor:
    """Every class's mask logits on every image, from ONE decoder call: (B, C, h, w) low-res logits.

    semantic: (C, D) class tokens; spatial: (B, S, D) each image's spatial tokens. Class c's prompt
    set on image b is [semantic[c], spatial[b]] (Eq. 8); its single-mask output is class c's map.
    """
    batch, classes = len(embedding), semantic.shape[0]
    if spatial.ndim != 3 or spatial.shape[0] != batch or spatial.shape[-1] != semantic.shape[-1]:
        raise bad_argument("spatial", f"spatial tokens of shape ({batch}, S, {semantic.shape[-1]})", spatial)
    tokens = torch.cat([semantic[None, :, None, :].expand(batch, -1, -1, -1),
                        spatial[:, None].expand(-1, classes, -1, -1)], dim=2)
    rows = [b for b in range(batch) for _ in range(classes)]
    images = embedding if batch == 1 else embedding.select(rows)  # one image broadcasts to its C sets
    low_res, _ = adapter.decode(images, tokens.flatten(0, 1), multimask=False)
    return low_res.view(batch, classes, *low_res.shape[-2:])


def class_maps(adapter: SamAdapter, embedding: ImageEmbedding, logits: torch.Tensor) -> list[np.ndarray]:
    """(B, C, h, w) low-res class logits -> one (H, W) int64 map per image: the argmax over the
    classes at the image's own size."""
    return [adapter.postprocess_masks(logits[b:b + 1], embedding.input_sizes[b],
                                      embedding.original_sizes[b])[0].argmax(0).cpu().numpy()
            for b in range(len(embedding))]


__all__ = ["DefaultClicks", "TextPromptEncoder", "class_maps", "class_mask_logits", "click_tokens", "point_grid",
           "text_prompt_cache_path"]
