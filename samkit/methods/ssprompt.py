"""SSPrompt: learn SAM's spatial and semantic prompts in embedding space (Huang et al., SSPrompt).

Equation numbers are the paper's (`../shared/papers/ssprompt_003_*.txt`). The paper runs on SEEM;
SAM has no text prompt encoder and is class-agnostic, so here SAM gets the frozen text prompt
encoder of `samkit.models.text_prompts` and becomes a semantic segmenter like this (Eq. 2):

- default spatial prompts Z_default^S: N positive clicks on a grid, through SAM's frozen prompt
  encoder (plus the padding token SAM appends when there is no box, kept fixed);
- default semantic prompts Z_default^T: one token per class name from the text prompt encoder;
- the semantic head: class c's prompt set [z_c^T, Z^S] goes through the frozen mask decoder and
  its single-mask output is class c's logit map; every class of every image is decoded in one
  batched call; the per-pixel argmax over the classes (background "stuff" included) is the
  prediction, and pixel-wise cross-entropy is the loss (Eq. 9).

What trains (everything else is frozen), as `variant`:
- "spaprompt" (Eq. 4-5): N learnable embeddings and N weights w = sigmoid(a) for the clicks;
- "semprompt" (Eq. 6-7): C learnable embeddings and C weights for the class tokens;
- "ssprompt" (Eq. 8-9): both; "average": both embeddings with w fixed at 0.5 (Table 5's
  "learnable embedding, averaged with the default"); "spatial_average", "semantic_average":
  one kind only; "default": nothing (zero-shot, Eq. 2);
- "vspl" (Table 8): the N clicks' (x, y) positions themselves, through the frozen prompt encoder;
- "spaprompt_lowrank" (Table 8's control): 2 free numbers per click too, but each click token moves
  in a random 2-D plane of its own instead of along the positional encoding's manifold.

`class_balanced` weighs Eq. 9's pixels by inverse class frequency; `learned_scale` multiplies the
steps of the learnable embeddings (2 undoes the halving of their gradient under averaging).
With `model="text_tinysam"` the default semantic prompts are that model's own name tokens.

Two readings the paper leaves open, taken here:
- learnable embeddings start as copies of the defaults (`embedding_init="default"`), so every
  variant starts from the default prompts' prediction, or at random ("random": then w has a
  gradient from the first step, which notebook 03 needs for Fig. 3b); weights start at w = 0.5;
- Eq. 4/6 give w to the *learned* embedding; the paper's prose ("learnable weights to weight the
  default prompt embeddings") and its reading of Fig. 3b suggest the plotted weight is the one on
  the default. `semantic_weights()` returns w as in Eq. 6; 1 - w is the weight on the default.
  Note also that w * z_hat + (1 - w) * z = z + w (z_hat - z): with z_hat free, only the product
  w (z_hat - z) is determined by the loss, so w is set by the optimiser's path and weight decay.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from samkit.cache import CachedEncoder
from samkit.checkpoints import CheckpointError
from samkit.datasets.fewshot import few_shot_indices
from samkit.datasets.semantic import UNLABELLED, SemanticData, class_pixel_counts, semantic_scores
from samkit.datasets.specs import semantic_data
from samkit.errors import bad_argument
from samkit.methods.base import Method, register_method
from samkit.metrics import class_iou
from samkit.metrics import confusion_matrix as _labelled_confusion_matrix
from samkit.models.base import ImageEmbedding, SamAdapter, Size
from samkit.models.registry import load_model
from samkit.models.text_prompts import (DefaultClicks, TextPromptEncoder, class_maps, class_mask_logits,
                                       click_tokens, point_grid, text_prompt_cache_path)

IGNORE = UNLABELLED  # label of pixels that count for nothing (unlabelled, padding)
FUSIONS = ("fixed", "average", "weighted")
VARIANTS: dict[str, tuple[str, str]] = {  # variant -> (how the clicks are made, how the class tokens are)
    "default": ("fixed", "fixed"),  # Eq. 2
    "spatial_average": ("average", "fixed"),
    "spaprompt": ("weighted", "fixed"),  # Eq. 4-5
    "semantic_average": ("fixed", "average"),
    "semprompt": ("fixed", "weighted"),  # Eq. 6-7
    "average": ("average", "average"),
    "ssprompt": ("weighted", "weighted"),  # Eq. 8-9
    "vspl": ("coordinates", "fixed"),  # Table 8
    "spaprompt_lowrank": ("lowrank", "fixed"),  # Table 8's control: 2 free numbers per click, off the 2-D manifold
}
EMBEDDING_INITS = ("default", "random")
# How the text prompt projection is fitted when a config does not say (the class profile's recipe).
# Seed 7: scenes that neither TinySAM's pre-training (seed 0) nor the experiments draw.
TEXT_PROMPT_RECIPE: dict[str, Any] = {
    "encoder": "minilm", "steps": 48, "batch": 2, "lr": 5e-2, "seed": 0,
    "data": {"kind": "shapescenes", "split": "train", "classes": "all", "n": 160, "seed": 7},
}


# ---- Eq. 4 / Eq. 6: the fusion ------------------------------------------------------------
def fuse(default: torch.Tensor, learned: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 4 / Eq. 6: w_k * learned_k + (1 - w_k) * default_k for each of K (K, D) embeddings."""
    if default.shape != learned.shape or weights.shape != default.shape[:-1]:
        raise bad_argument("weights", f"one weight per embedding, shape {tuple(default.shape[:-1])}, with "
                           f"default and learned of one shape {tuple(default.shape)}", weights)
    w = weights[..., None]
    return w * learned + (1 - w) * default


class PromptFusion(nn.Module):
    """K prompt embeddings: the defaults as they are ("fixed"), or fused with K learnable
    embeddings by Eq. 4/6 with w fixed at 0.5 ("average") or w = sigmoid(a) learned ("weighted").

    learned_scale: the learnable embedding is stored divided by this and used multiplied by it, so
    under Adam its steps are this many times larger: 2 undoes the halving that averaging (w = 0.5)
    applies to the learned embedding's gradient (a control for "weights vs averaging")."""

    def __init__(self, init: torch.Tensor, mode: str = "weighted", embedding_init: str = "default",
                 learned_scale: float = 1.0):
        super().__init__()
        if mode not in FUSIONS:
            raise bad_argument("mode", f"one of {FUSIONS}", mode)
        if embedding_init not in EMBEDDING_INITS:
            raise bad_argument("embedding_init", f"one of {EMBEDDING_INITS}", embedding_init)
        if not torch.is_tensor(init) or init.ndim != 2:
            raise bad_argument("init", "default embeddings of shape (K, D)", init)
        if not learned_scale > 0:
            raise bad_argument("learned_scale", "a positive number", learned_scale)
        self.mode, self.learned_scale = mode, float(learned_scale)
        self.learned: nn.Parameter | None = None
        if mode == "fixed":
            self.weight_logits = None
            return
        start = init.detach().clone() if embedding_init == "default" else torch.randn_like(init) * init.std()
        self.learned = nn.Parameter(start / self.learned_scale)  # z_hat / learned_scale
        logits = torch.zeros(init.shape[0], device=init.device)  # a = 0: w = 0.5
        if mode == "weighted":
            self.weight_logits = nn.Parameter(logits)
        else:
            self.register_buffer("weight_logits", logits)

    def weights(self) -> torch.Tensor | None:
        """w in [0, 1], one per embedding (None for "fixed")."""
        return None if self.weight_logits is None else torch.sigmoid(self.weight_logits)

    def learned_embeddings(self) -> torch.Tensor | None:
        """z_hat, the K learnable embeddings (None for "fixed")."""
        return None if self.learned is None else self.learned * self.learned_scale

    def forward(self, default: torch.Tensor) -> torch.Tensor:
        if self.learned is None:
            return default
        return fuse(default, self.learned_embeddings(), self.weights())


# ---- spatial prompts: clicks through SAM's frozen prompt encoder --------------------------
class LearnedClicks(nn.Module):
    """VSPL: the clicks' positions are the parameters; fractions = sigmoid(logits) stay inside the image."""

    def __init__(self, fractions: np.ndarray):
        super().__init__()
        self.logits = nn.Parameter(torch.logit(torch.as_tensor(fractions, dtype=torch.float32)))

    def fractions(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class LowRankClicks(nn.Module):
    """Table 8's control for VSPL: each click token moves in a fixed random 2-D plane of its own,
    z_n + B_n c_n, with c_n (2 numbers, like VSPL's x and y) learned from 0. The plane is not the
    positional encoding's 2-D manifold, so this tells "two free numbers per click" from "moving
    along the manifold"."""

    def __init__(self, tokens: torch.Tensor, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        planes = torch.linalg.qr(torch.randn(tokens.shape[0], tokens.shape[1], 2, generator=generator)).Q
        scale = tokens.detach().norm(dim=1).mean()  # c = 1 moves a token by about its own norm
        self.register_buffer("planes", (planes * scale).transpose(1, 2).to(tokens))  # (N, 2, D)
        self.offsets = nn.Parameter(torch.zeros(tokens.shape[0], 2, device=tokens.device))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + torch.einsum("nk,nkd->nd", self.offsets, self.planes)


# ---- the semantic head and Eq. 9 -------------------------------------------------------------
def semantic_loss(logits: torch.Tensor, labels: torch.Tensor,
                  class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 9 with L_seg = pixel-wise cross-entropy over classes: (B, C, h, w) logits, (B, h, w) labels;
    `class_weights` (C,) weigh each class's pixels (class-balanced training)."""
    if not (labels != IGNORE).any():  # nothing labelled: a zero that still reaches every weight
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, weight=class_weights, ignore_index=IGNORE)


def labels_on_grid(labels: np.ndarray, input_size: Size, image_size: int, grid: Size) -> torch.Tensor:
    """A label map (H, W) in SAM's low-res frame: resized as SAM resizes the image (nearest),
    padded with IGNORE like the image, then sampled on the (h, w) grid of the low-res logits."""
    values = torch.as_tensor(np.asarray(labels, dtype=np.float32))[None, None]
    resized = F.interpolate(values, size=tuple(input_size), mode="nearest")
    padded = F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]), value=IGNORE)
    return F.interpolate(padded, size=tuple(grid), mode="nearest")[0, 0].long()


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) pixel counts, row = true class, column = predicted; IGNORE pixels left out."""
    return _labelled_confusion_matrix(predicted, labels, num_classes, ignore_index=IGNORE)


# ---- the default semantic prompts: fit (once) and cache the text prompt projection -----------
def fit_text_prompts(adapter: SamAdapter, encoder: TextPromptEncoder, data: SemanticData, fractions: np.ndarray,
                     steps: int, batch: int, lr: float, seed: int = 0, progress: bool = False) -> list[float]:
    """Fit `encoder`'s projection with SAM and the text model frozen; returns the loss of each step.

    Each step: `batch` random images of `data`; every class name's token with the default clicks
    through the frozen decoder; Eq. 9's cross-entropy over `data.class_names`; one Adam step.
    """
    rng = np.random.default_rng(seed)
    images = CachedEncoder(adapter)
    vectors = encoder.text_vectors(data.class_names)
    default_clicks = DefaultClicks(adapter, fractions)
    first_size = images.embed(data.item(0)[0])[0].input_sizes[0]
    encoder.match_strength(data.class_names, default_clicks(first_size)[:len(fractions)])  # start as strong as a click
    optimizer = torch.optim.Adam(encoder.projection.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="fitting the text prompt projection", disable=not progress, leave=False):
        items = [data.item(int(i)) for i in rng.choice(len(data), size=batch, replace=len(data) < batch)]
        embedding, _ = images.embed([image for image, _ in items])
        spatial = torch.stack([default_clicks(size) for size in embedding.input_sizes])
        logits = class_mask_logits(adapter, embedding, encoder.projection(vectors), spatial)
        labels = torch.stack([labels_on_grid(lab, size, adapter.image_size, tuple(logits.shape[-2:]))
                              for (_, lab), size in zip(items, embedding.input_sizes)]).to(logits.device)
        loss = semantic_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def default_semantic_prompts(adapter: SamAdapter, class_names: Sequence[str], fractions: np.ndarray,
                             recipe: dict[str, Any] | None = None, progress: bool = False) -> torch.Tensor:
    """Z_default^T: (C, D) tokens of `class_names` from the text prompt encoder fitted by `recipe`
    (TEXT_PROMPT_RECIPE's keys; loaded from the cache, else fitted once and cached)."""
    recipe = {**TEXT_PROMPT_RECIPE, **(recipe or {})}
    unknown = sorted(set(recipe) - set(TEXT_PROMPT_RECIPE))
    if unknown:
        raise bad_argument("text_prompts", f"keys among {sorted(TEXT_PROMPT_RECIPE)}", unknown)
    key = {"model": adapter.name, "checkpoint": adapter.checkpoint_sha256, "clicks": fractions.round(6).tolist(),
           **recipe}
    path = text_prompt_cache_path(key)
    with torch.random.fork_rng(devices=[]):  # fitting or not must not move the caller's random state
        torch.manual_seed(recipe["seed"])
        encoder = TextPromptEncoder(recipe["encoder"], adapter.token_dim, adapter.device)
        loaded = False
        if adapter.checkpoint_sha256 is not None and path.exists():
            try:
                encoder.load(path)
                loaded = True
            except CheckpointError as error:
                warnings.warn(f"{error}; fitting it again", stacklevel=2)
        if not loaded:
            data = semantic_data(recipe["data"], "text_prompts.data")
            fit_text_prompts(adapter, encoder, data, fractions, recipe["steps"], recipe["batch"], recipe["lr"],
                             recipe["seed"], progress)
            if adapter.checkpoint_sha256 is not None:  # random weights: nothing worth keeping
                encoder.save(path, key)
    with torch.no_grad():
        return encoder(class_names).detach()


# ---- the method ---------------------------------------------------------------------------------
@register_method("ssprompt")
class SSPrompt(Method):
    """SSPrompt and its ablations on frozen SAM (see the module docstring): `variant` in VARIANTS.

    train / test: data set specs (ShapeScenes, a reader, or a semantic_folder); the training set
    is a `shots`-shot selection from `train` (None: all of it). spatial_points: N (a square).
    text_prompts: the text prompt projection's recipe (TEXT_PROMPT_RECIPE's keys).
    embedding_init: "default" (learnable embeddings start as copies of the defaults) or "random";
    spatial_embedding_init: the same for the clicks' embeddings alone (None: as embedding_init).
    short_side: resize images so their shorter side has this length; flip: random horizontal flips.
    stuff_classes: background classes, when the data set does not say.
    """

    def __init__(self, train: dict[str, Any], test: dict[str, Any], variant: str = "ssprompt",
                 shots: int | None = 16, spatial_points: int = 100, model: str = "tinysam",
                 checkpoint: str | None = None, text_prompts: dict[str, Any] | None = None,
                 embedding_init: str = "default", spatial_embedding_init: str | None = None,
                 short_side: int | None = None, flip: bool = True,
                 stuff_classes: Sequence[str] | None = None, selection_seed: int = 0, eval_batch: int = 4,
                 class_balanced: bool = False, learned_scale: float = 1.0, progress: bool = False,
                 device: torch.device | str = "cpu"):
        super().__init__()
        if variant not in VARIANTS:
            raise bad_argument("variant", f"one of {sorted(VARIANTS)}", variant)
        if spatial_embedding_init not in (None, *EMBEDDING_INITS):
            raise bad_argument("spatial_embedding_init", f"None or one of {EMBEDDING_INITS}", spatial_embedding_init)
        self.variant, self.flip, self.eval_batch = variant, flip, eval_batch
        self.adapter: SamAdapter = load_model(model, checkpoint=checkpoint, device=device)
        self.sam = self.adapter.module
        self.sam.requires_grad_(False)
        self.train_data = semantic_data(train, "train", stuff_classes, short_side)
        self.test_data = semantic_data(test, "test", stuff_classes, short_side)
        if self.test_data.class_names != self.train_data.class_names:
            raise bad_argument("test", f"the classes of train {self.train_data.class_names}",
                               self.test_data.class_names)
        self.class_names = self.train_data.class_names
        self.stuff_classes = self.train_data.stuff_classes
        if shots is None:
            self.train_indices = list(range(len(self.train_data)))
        else:
            present = [self.train_data.classes_in(i) for i in range(len(self.train_data))]
            self.train_indices = few_shot_indices(present, len(self.class_names), shots, selection_seed)
        self.grid = point_grid(spatial_points)
        self.images = CachedEncoder(self.adapter, memory_items=2 * len(self.train_indices) + 64)
        self.default_clicks = DefaultClicks(self.adapter, self.grid)  # input size -> Z_default^S (Eq. 2)

        spatial_mode, semantic_mode = VARIANTS[variant]
        own_text = getattr(self.adapter, "text_prompts", None)  # a model that segments by name (text_tinysam)
        if own_text is not None and getattr(self.adapter, "spatial_points", spatial_points) != spatial_points:
            raise bad_argument("spatial_points", f"{self.adapter.spatial_points}, the clicks {model} was trained with",
                               spatial_points)
        if own_text is not None:
            with torch.no_grad():
                semantic_default = own_text(list(self.class_names)).detach()
        else:
            semantic_default = default_semantic_prompts(self.adapter, self.class_names, self.grid, text_prompts,
                                                        progress)
        self.register_buffer("semantic_default", semantic_default)  # z^T, frozen
        self.semantic = PromptFusion(semantic_default, semantic_mode, embedding_init, learned_scale)  # Eq. 6
        first_image = self.train_data.item(self.train_indices[0])[0]
        clicks = self.default_clicks(self.images.embed(first_image)[0].input_sizes[0])[:spatial_points]
        self.spatial = PromptFusion(clicks, spatial_mode if spatial_mode not in ("coordinates", "lowrank") else "fixed",
                                    spatial_embedding_init or embedding_init, learned_scale)  # Eq. 4
        self.clicks = LearnedClicks(self.grid) if spatial_mode == "coordinates" else None  # VSPL
        self.lowrank = LowRankClicks(clicks) if spatial_mode == "lowrank" else None  # Table 8's control
        self.register_buffer("class_weights", self.balanced_weights() if class_balanced else None)
        self.last_class_iou: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.train_indices)

    # ---- prompts ---------------------------------------------------------------------------
    def spatial_prompts(self, size: Size) -> torch.Tensor:
        """The clicks' tokens for an image filling `size` of the input frame: Eq. 4's fusion, or VSPL's clicks."""
        n = len(self.grid)
        if self.clicks is not None:  # VSPL: through the frozen prompt encoder, gradient to (x, y)
            return click_tokens(self.adapter, self.clicks.fractions(), size)
        tokens = self.default_clicks(size)
        clicks = self.lowrank(tokens[:n]) if self.lowrank is not None else self.spatial(tokens[:n])
        return torch.cat([clicks, tokens[n:]])  # the padding token stays as SAM makes it

    def class_logits(self, embedding: ImageEmbedding) -> torch.Tensor:
        """(B, C, h, w) low-res logits of every class (Eq. 8)."""
        semantic = self.semantic(self.semantic_default)  # Eq. 6
        spatial = torch.stack([self.spatial_prompts(size) for size in embedding.input_sizes])
        return class_mask_logits(self.adapter, embedding, semantic, spatial)

    def semantic_weights(self) -> dict[str, float]:
        """Each class's w of Eq. 6 (the weight on its learned embedding); empty unless learned."""
        weights = self.semantic.weights()
        if weights is None or self.semantic.mode != "weighted":
            return {}
        return dict(zip(self.class_names, weights.detach().cpu().tolist()))

    def spatial_weights(self) -> np.ndarray | None:
        """The N clicks' w of Eq. 4, in grid order (row by row), or None unless learned."""
        weights = self.spatial.weights()
        return None if weights is None or self.spatial.mode != "weighted" else weights.detach().cpu().numpy()

    def click_positions(self) -> np.ndarray:
        """(N, 2) click positions (x, y) as fractions of the image: the grid, or where VSPL moved them."""
        if self.clicks is None:
            return self.grid.copy()
        return self.clicks.fractions().detach().cpu().numpy()

    def balanced_weights(self) -> torch.Tensor:
        """(C,) class weights for a class-balanced loss: inverse pixel frequency over the training
        images, normalised to mean 1 over the classes they contain (absent classes weigh 0)."""
        counts = class_pixel_counts(self.train_data, self.train_indices)
        weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        weights *= (counts > 0).sum() / weights.sum()
        return torch.as_tensor(weights, dtype=torch.float32, device=self.adapter.device)

    # ---- training ------------------------------------------------------------------------------
    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image, labels = self.train_data.item(self.train_indices[index])
        if self.flip and rng.random() < 0.5:
            image, labels = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(labels[:, ::-1])
        return {"image": image, "labels": labels}

    def forward(self, batch: list[dict[str, np.ndarray]]) -> tuple[torch.Tensor, dict[str, float]]:
        embedding, _ = self.images.embed([sample["image"] for sample in batch])
        logits = self.class_logits(embedding)
        grid = tuple(logits.shape[-2:])
        labels = torch.stack([labels_on_grid(sample["labels"], size, self.adapter.image_size, grid)
                              for sample, size in zip(batch, embedding.input_sizes)]).to(logits.device)
        loss = semantic_loss(logits, labels, self.class_weights)  # Eq. 9
        labelled = labels != IGNORE
        accuracy = (logits.argmax(1) == labels)[labelled].float().mean() if labelled.any() else logits.new_zeros(())
        return loss, {"pixel_accuracy": float(accuracy)}

    # ---- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H, W) int64 class predictions, one per image: the argmax over classes at full size."""
        embedding, _ = self.images.embed(list(images))
        logits = self.class_logits(embedding)
        return class_maps(self.adapter, embedding, logits)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """mIoU over the test set (see `semantic_scores`) and each class's IoU as `iou_<name>` (so the
        trainer's history keeps them); the per-class IoU also in `last_class_iou`."""
        metrics, self.last_class_iou = semantic_scores(self.predict, self.test_data, self.eval_batch)
        return {**metrics, **{f"iou_{name}": value for name, value in self.last_class_iou.items()}}

    def describe(self) -> str:
        return (f"ssprompt ({self.variant}) on {self.adapter.name}, {len(self)} training images, "
                f"{len(self.class_names)} classes, N = {len(self.grid)}: " + super().describe())


__all__ = ["FUSIONS", "IGNORE", "SSPrompt", "TEXT_PROMPT_RECIPE", "VARIANTS", "PromptFusion", "LearnedClicks",
           "LowRankClicks",
           "class_iou", "class_mask_logits", "click_tokens", "confusion_matrix", "default_semantic_prompts",
           "fit_text_prompts", "fuse", "labels_on_grid", "point_grid", "semantic_loss", "semantic_scores"]
