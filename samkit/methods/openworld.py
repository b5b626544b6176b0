"""The `openworld` recipe: OpenWorldSAM's language adapter in front of a frozen SAM (paper 004, section 3).

    class name ──frozen text encoder──▶ p_lang ──MLP projector──▶ u             (projection)
    q_i = u + t_i,  i = 1..K   (K learnable positional tie-breakers)                 (Eq. 1)
    q'_i = SoftPromptTransformer(q_i, F)   (self-attention among queries, cross-attention to F)
    q'_i ──as one sparse prompt token each──▶ frozen SAM mask decoder ──▶ K masks + K scores

Only the adapter trains (projector, tie-breakers, soft-prompt transformer); SAM and the text
encoder are frozen, so image embeddings F come from `samkit.cache` (the encoder runs once per
image). Training matches the K masks of a class query to that class's ground-truth masks with
the Hungarian algorithm and applies a sigmoid focal loss (alpha 0.25, gamma 2) to matched pairs
(dice optional). Inference (appendix A.2): drop masks whose score (SAM's predicted IoU) is below
0.7, non-maximum suppression at mask IoU 0.5; semantic maps merge each class's masks weighted
by their scores.

The ablation switches of Table 5: `tie_breakers=False` drops the t_i (E1); `soft_prompt_layers=0`
drops the soft-prompt transformer (E1, E3: the paper's E3 -> E5 adds 2.8M parameters, about
this 3-layer transformer, so its "Cross-Attn" column switches the whole block); and
`cross_attention=False` keeps the layers but removes their cross-attention (self-attention only).

The text encoder here sees only the text (MiniLM or CLIP), like Table 4's text-only rows; the
paper's BEiT-3 also sees the image (early fusion), which `transformers` does not provide.

Choices the paper leaves open, made here: the cross-attention keys carry fixed 2-D sine positions
(or, with `positions="clicks"`, SAM's own click tokens); the transformer's residual branches start
at zero, so an untrained E5 computes exactly E3's queries (short runs were unstable otherwise);
the loss is computed at the decoder's low-res output (256 x 256 for SAM, 64 x 64 for TinySAM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from samkit.cache import CachedEncoder
from samkit.datasets import BACKGROUND, STUFF_CLASSES, VOCABULARY, ShapeScenes
from samkit.datasets.specs import build_dataset
from samkit.errors import bad_argument
from samkit.methods.base import Method, register_method
from samkit.metrics import ap50, iou_matrix, semantic_miou
from samkit.models.base import ImageEmbedding, SamAdapter, masks_on_grid
from samkit.models.registry import load_model
from samkit.models.text import TextEncoder
from samkit.positions import sine_positions

# ---------------------------------------------------------------------------------------
# The language adapter (section 3, Figure 4b/c)


class SoftPromptLayer(nn.Module):
    """One pre-LayerNorm layer: self-attention among the K queries, cross-attention to the image, MLP."""

    def __init__(self, dim: int = 256, heads: int = 8, mlp_dim: int = 1024, dropout: float = 0.1,
                 cross_attention: bool = True, positions_in_values: bool = False, zero_init: bool = True):
        super().__init__()
        self.positions_in_values = positions_in_values
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.dropout = nn.Dropout(dropout)
        if zero_init:
            # Residual branches start at zero: the layer starts as the identity, so the transformer
            # starts from the queries q_i = u + t_i and adds image information only as it learns it.
            outputs = [self.self_attn.out_proj, self.mlp[-1]] + ([self.cross_attn.out_proj] if cross_attention else [])
            for linear in outputs:
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor | None, memory_pos: torch.Tensor | None):
        """queries (Q, K, C); memory (Q, h*w, C) image features; memory_pos (h*w, C) their positions."""
        x = self.norm_self(queries)
        queries = queries + self.dropout(self.self_attn(x, x, x, need_weights=False)[0])  # queries talk: diversity
        if self.cross_attention:
            x = self.norm_cross(queries)
            # q'_i = CrossAttn(q_i, F): keys carry positions (values too with positions_in_values).
            keys = memory + memory_pos
            values = keys if self.positions_in_values else memory
            attended = self.cross_attn(x, keys, values, need_weights=False)[0]
            queries = queries + self.dropout(attended)
        return queries + self.dropout(self.mlp(self.norm_mlp(queries)))


class LanguageAdapter(nn.Module):
    """Text vectors + image features -> K prompt tokens per query: components (iii)-(v) of section 3.

    text_dim: length of the text encoder's vectors. token_dim: SAM's prompt channels (256).
    num_queries: K. projector_hidden: hidden width of the 2-layer projector (default text_dim).
    tie_breakers / soft_prompt_layers / cross_attention: the ablation switches (module docstring).
    """

    def __init__(self, text_dim: int, token_dim: int = 256, num_queries: int = 20, projector_hidden: int | None = None,
                 tie_breakers: bool = True, tie_breaker_std: float = 1.0, soft_prompt_layers: int = 3,
                 cross_attention: bool = True, heads: int = 8, mlp_dim: int = 1024, dropout: float = 0.1,
                 positions_in_values: bool = False):
        super().__init__()
        for name, value in (("text_dim", text_dim), ("token_dim", token_dim), ("num_queries", num_queries)):
            if not isinstance(value, int) or value < 1:
                raise bad_argument(name, "a positive int", value)
        if not isinstance(soft_prompt_layers, int) or soft_prompt_layers < 0:
            raise bad_argument("soft_prompt_layers", "an int >= 0", soft_prompt_layers)
        if token_dim % heads:
            raise bad_argument("heads", f"a divisor of token_dim {token_dim}", heads)
        hidden = projector_hidden or text_dim
        self.num_queries, self.token_dim = num_queries, token_dim
        # u = MLP(p_lang): keeps the coarse semantics, learns which dimensions matter for masks. The
        # LayerNorm first gives every encoder's vectors the same scale (MiniLM and CLIP return unit
        # vectors, ~0.05 per channel, which would start u near zero while the t_i start at ~1).
        self.projector = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden), nn.ReLU(),
                                       nn.Linear(hidden, token_dim))
        # t_1..t_K, random normal init; absent (not zero) when switched off, so nothing unused trains.
        self.tie_breakers = nn.Parameter(torch.randn(num_queries, token_dim) * tie_breaker_std) \
            if tie_breakers else None
        self.layers = nn.ModuleList(SoftPromptLayer(token_dim, heads, mlp_dim, dropout, cross_attention,
                                                    positions_in_values)
                                    for _ in range(soft_prompt_layers))
        self.reads_image = soft_prompt_layers > 0 and cross_attention
        # Without tie-breakers or layers the K queries are one vector K times (E1).
        self.distinct_queries = tie_breakers or soft_prompt_layers > 0
        # The frozen encoder's features have their own scale (SAM2's differ from TinySAM's): normalise them.
        self.norm_memory = nn.LayerNorm(token_dim) if self.reads_image else None

    def forward(self, text_vectors: torch.Tensor, image_embed: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """text_vectors (Q, text_dim), image_embed (Q, C, h, w) -> prompt tokens (Q, K, C).

        positions: (h*w, C) what says where each image cell is; default fixed sine positions.
        """
        u = self.projector(text_vectors)  # (Q, C)
        queries = u[:, None, :].expand(-1, self.num_queries, -1)  # K copies of the same query
        if self.tie_breakers is not None:
            queries = queries + self.tie_breakers[None]  # Eq. (1): q_i = u + t_i
        if not self.layers:
            return queries
        memory = memory_pos = None
        if self.reads_image:
            expected = (len(text_vectors), self.token_dim)
            if image_embed is None or image_embed.ndim != 4 or tuple(image_embed.shape[:2]) != expected:
                raise bad_argument("image_embed", f"({expected[0]}, {expected[1]}, h, w) features", image_embed)
            height, width = image_embed.shape[-2:]
            memory = self.norm_memory(image_embed.flatten(2).transpose(1, 2))  # (Q, h*w, C): F, flattened
            memory_pos = (positions if positions is not None
                          else sine_positions(height, width, self.token_dim, device=image_embed.device)).to(memory.dtype)
        for layer in self.layers:  # the soft-prompting transformer (Figure 4c)
            queries = layer(queries, memory, memory_pos)
        return queries


# ---------------------------------------------------------------------------------------
# Loss: Hungarian matching, then focal (+ optional dice) on matched pairs (section 3, "Training")


def pairwise_focal_cost(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                        gamma: float = 2.0) -> torch.Tensor:
    """(K, G) mean per-pixel sigmoid focal loss of every prediction against every target.

    logits (K, P), targets (G, P) in [0, 1]. The focal loss is linear in the target, so the
    whole matrix is two matrix products (Mask2Former's batch cost).
    """
    prob = logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.ones_like(logits), reduction="none")
    negative = (1 - alpha) * prob ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none")
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(K, G) soft dice loss 1 - 2|P G| / (|P| + |G|) of every prediction against every target."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(1)[:, None] + targets.sum(1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def hungarian_match(cost: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The assignment of predictions (rows) to targets (columns) with the least total cost.

    Returns (rows, cols): min(K, G) pairs; each prediction and each target is used at most once.
    """
    matrix = cost.detach().float().cpu().numpy() if torch.is_tensor(cost) else np.asarray(cost, dtype=np.float64)
    if matrix.ndim != 2 or not np.isfinite(matrix).all():
        raise bad_argument("cost", "a finite (predictions, targets) matrix", cost)
    rows, cols = linear_sum_assignment(matrix)
    return rows, cols


def match_predictions(logits: torch.Tensor, targets: torch.Tensor, focal_weight: float = 20.0, alpha: float = 0.25,
                      gamma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of K mask logits (K, h, w) to G targets (G, h, w): (rows, cols), min(K, G) pairs.

    Cost = focal_weight * focal + dice (the dice cost always helps the matching pick whole instances).
    """
    with torch.no_grad():
        flat_logits, flat_targets = logits.flatten(1).float(), targets.flatten(1).float()
        cost = focal_weight * pairwise_focal_cost(flat_logits, flat_targets, alpha, gamma) \
            + pairwise_dice_cost(flat_logits, flat_targets)
    return hungarian_match(cost)


def matched_mask_loss(logits: torch.Tensor, targets: torch.Tensor, focal_weight: float = 20.0,
                      dice_weight: float = 0.0, unmatched_weight: float = 0.0, alpha: float = 0.25,
                      gamma: float = 2.0, assignment: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one class query: its K mask logits (K, h, w) against its G targets (G, h, w).

    loss = focal_weight * focal + dice_weight * dice over the pairs of `match_predictions`, plus
    unmatched_weight * focal towards an empty mask for the K - G unmatched predictions (0 in the
    paper, which leaves them free; the 0.7 score threshold must then drop them).
    assignment: (rows, cols) already matched, with `logits` holding only the matched rows, in
    that order (then unmatched_weight must be 0): the two-pass training step of `OpenWorld.forward`.
    """
    flat_logits = logits.flatten(1).float()
    flat_targets = targets.flatten(1).float()
    if assignment is None:
        rows, cols = match_predictions(logits, targets, focal_weight, alpha, gamma)
        matched_rows = torch.as_tensor(rows, device=logits.device, dtype=torch.long)
    else:
        if unmatched_weight:
            raise bad_argument("unmatched_weight", "0 when the logits of the matched rows come alone", unmatched_weight)
        rows, cols = assignment
        matched_rows = torch.arange(len(rows), device=logits.device)
    cols_t = torch.as_tensor(cols, device=logits.device, dtype=torch.long)
    matched, goal = flat_logits[matched_rows], flat_targets[cols_t]
    focal = sigmoid_focal_loss(matched, goal, alpha=alpha, gamma=gamma, reduction="none").mean(1)
    loss = focal_weight * focal.mean()
    logs = {"focal": float(focal.mean().detach())}
    if dice_weight:
        dice = pairwise_dice_cost(matched, goal).diagonal()
        loss = loss + dice_weight * dice.mean()
        logs["dice"] = float(dice.mean().detach())
    if unmatched_weight and len(rows) < len(flat_logits):
        free = torch.ones(len(flat_logits), dtype=torch.bool, device=logits.device)
        free[matched_rows] = False
        empty = sigmoid_focal_loss(flat_logits[free], torch.zeros_like(flat_logits[free]),
                                   alpha=alpha, gamma=gamma, reduction="mean")
        loss = loss + unmatched_weight * focal_weight * empty
    return loss, logs


# ---------------------------------------------------------------------------------------
# Inference (appendix A.2) and the numbers of the notebook


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy non-maximum suppression on masks: indices kept, best score first.

    A mask is dropped when its IoU with an already kept, higher-scoring mask is >= iou_threshold.
    """
    if masks.ndim != 3 or scores.shape != masks.shape[:1]:
        raise bad_argument("masks/scores", "(N, H, W) masks and (N,) scores", masks)
    order = torch.argsort(scores, descending=True, stable=True)
    ious = iou_matrix(masks[order], masks[order]).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for position in range(len(order)):
        if not suppressed[position]:
            kept.append(position)
            suppressed |= ious[position] >= iou_threshold
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def select_instances(masks: torch.Tensor, scores: torch.Tensor, score_threshold: float = 0.7,
                     nms_iou: float = 0.5) -> torch.Tensor:
    """Instance inference of appendix A.2: indices of non-empty masks scoring >= score_threshold
    that survive NMS at nms_iou."""
    candidates = torch.nonzero((scores >= score_threshold) & masks.flatten(1).any(1)).flatten()
    if len(candidates) == 0:
        return candidates
    return candidates[mask_nms(masks[candidates], scores[candidates], nms_iou)]


def distinct_masks(masks: torch.Tensor, iou_threshold: float = 0.5) -> int:
    """How many of the non-empty masks differ: the size of a greedy set with pairwise IoU < threshold."""
    present = masks[masks.flatten(1).any(1)]
    if len(present) == 0:
        return 0
    areas = present.flatten(1).sum(1).float()  # larger masks first: a fixed, score-free order
    return len(mask_nms(present, areas, iou_threshold))


def semantic_merge(probabilities: torch.Tensor, class_ids: Sequence[int]) -> np.ndarray:
    """A label map from per-class maps: probabilities (C, H, W) -> class_ids[argmax] per pixel."""
    if probabilities.ndim != 3 or len(class_ids) != len(probabilities):
        raise bad_argument("probabilities", f"({len(class_ids)}, H, W) maps, one per class id", probabilities)
    winner = probabilities.argmax(0).cpu().numpy()
    return np.asarray(class_ids, dtype=np.int64)[winner]


def class_probability(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """One class's map for the semantic merge: max over its K masks of score_i * sigmoid(logit_i)."""
    return (scores.float()[:, None, None] * logits.float().sigmoid()).amax(0)


# ---------------------------------------------------------------------------------------
# Data: which classes a sample can be asked for, and their target masks


def vocabulary_of(sample: Any) -> tuple[str, ...]:
    """Class names indexed by class id: the reader's, or ShapeScenes' VOCABULARY."""
    return tuple(getattr(sample, "vocabulary", VOCABULARY))


def stuff_classes_of(dataset: Any) -> tuple[str, ...]:
    """The stuff (amorphous background) class names of a data set, through view wrappers."""
    while dataset is not None:
        if hasattr(dataset, "stuff_classes"):
            return tuple(dataset.stuff_classes)
        if isinstance(dataset, ShapeScenes):
            return STUFF_CLASSES
        dataset = getattr(dataset, "dataset", None)
    return ()


def thing_classes_of(dataset: Any) -> tuple[str, ...]:
    """The countable (instance) class names of a data set: ShapeScenes' split classes or a reader's things."""
    while dataset is not None:
        if hasattr(dataset, "thing_classes"):
            return tuple(dataset.thing_classes)
        if isinstance(dataset, ShapeScenes):
            return tuple(dataset.class_names)
        if hasattr(dataset, "class_names") and not callable(dataset.class_names):
            return tuple(dataset.class_names)  # ClassSubset keeps these
        dataset = getattr(dataset, "dataset", None)
    return ()


def class_targets(sample: Any, stuff: Sequence[str]) -> dict[str, np.ndarray]:
    """Every class present in a sample -> its ground-truth masks (G, H, W) bool.

    Things: one mask per instance. Stuff classes (in `stuff`): one mask, its pixels in `semantic`.
    """
    vocabulary = vocabulary_of(sample)
    targets: dict[str, np.ndarray] = {}
    masks = np.asarray(sample.instance_masks, dtype=bool)
    for class_id in dict.fromkeys(int(c) for c in sample.instance_classes):
        of_class = masks[np.asarray(sample.instance_classes) == class_id]
        of_class = of_class[of_class.any(axis=(1, 2))]
        if len(of_class):
            targets[vocabulary[class_id]] = of_class
    for class_id in np.unique(sample.semantic):
        name = vocabulary[int(class_id)]
        if name in stuff and name != BACKGROUND and name not in targets:
            targets[name] = (sample.semantic == class_id)[None]
    return targets


def low_res_targets(masks: np.ndarray, input_size: tuple[int, int], image_size: int,
                    low_res_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Ground-truth masks (G, H, W) mapped into the decoder's low-res frame (G, h, w), as soft targets.

    The image was resized to `input_size` and padded to an `image_size` square before encoding;
    the targets take the same path, then are area-averaged down to the low-res logits' size,
    where the loss is computed (cheap at SAM's 1024 px too).
    """
    return masks_on_grid(masks, input_size, image_size, low_res_size, device).clamp(0, 1)


@dataclass
class QueryOutput:
    """What the model answers to one class query on one image: K masks and their scores."""

    class_name: str
    logits: torch.Tensor  # (K, H, W) mask logits at the image's size
    scores: torch.Tensor  # (K,) the frozen decoder's predicted IoU
    mask_threshold: float = 0.0

    @property
    def masks(self) -> torch.Tensor:
        return self.logits > self.mask_threshold


@dataclass
class Detections:
    """The instance candidates of the thing queries of an evaluation, one entry per query (the rows of
    `Evaluation.queries`, in order): the non-empty masks that survive NMS alone (no score filter),
    their scores, and the query's ground-truth instances. A score threshold applied afterwards keeps
    what the paper's rule (threshold, then NMS) keeps: a mask is only ever suppressed by a
    higher-scoring one."""

    masks: list[np.ndarray]   # (N_q, H, W) bool
    scores: list[np.ndarray]  # (N_q,) float
    truths: list[np.ndarray]  # (G_q, H, W) bool

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class Evaluation:
    """Metrics over a data set, one row per (image, class query) behind them, and the thing
    queries' candidates (`Detections`) for score-free analyses (threshold sweeps, calibration)."""

    metrics: dict[str, float]
    queries: pd.DataFrame
    detections: Detections


# ---------------------------------------------------------------------------------------
# The method the trainer runs

POSITIONS = ("sine", "clicks")
# How the tie-breakers t_i start: "random" (the paper: normals of std tie_breaker_std), "grid" (a declared
# variant: SAM's own token for a positive click at each point of a rows x cols grid over the frame, so each
# query starts out pointing somewhere), "random_norm" (its control: random directions, each of the norm of
# the grid token it replaces: the same scale without the locations).
TIE_BREAKER_INITS = ("random", "grid", "random_norm")


@register_method("openworld")
class OpenWorld(Method):
    """OpenWorldSAM's language adapter on a frozen SAM and a frozen text encoder (module docstring).

    train / eval_base / eval_novel: dataset specs (`samkit.datasets.specs`); eval sets may be None.
    text_encoder: "minilm" (offline) or "clip[:<repo or folder>]". prompt_template: how a class
    name becomes the text ("{}" = the bare name). num_queries: K. queries_per_image: classes asked
    per training image and step (at most; the paper uses up to 6). favour_multi_instance: draw those
    classes with probability proportional to their number of instances (more multi-instance
    queries per step). focal_weight / dice_weight / unmatched_weight: see `matched_mask_loss`
    (the paper's recipe, as in the authors' released config: focal_weight 20, the others 0).
    tie_breaker_init: how the t_i start (`TIE_BREAKER_INITS`).
    score_threshold / nms_iou: instance inference (appendix A.2). positions: what the cross-attention
    keys carry about where an image cell is: "sine" (fixed 2-D sine positions) or "clicks" (the token
    SAM's prompt encoder makes for a click on that cell, added to keys and values).
    eval_limit: samples per evaluation set (None: all). disk_cache / embeddings_in_memory: where
    the frozen encoder's embeddings are kept (a SAM 2 embedding at 1024 px is ~16 MB).
    """

    def __init__(self, train: dict[str, Any], eval_base: dict[str, Any] | None = None,
                 eval_novel: dict[str, Any] | None = None, model: str = "tinysam", checkpoint: str | None = None,
                 text_encoder: str = "minilm", prompt_template: str = "{}", num_queries: int = 20,
                 tie_breakers: bool = True, tie_breaker_std: float = 1.0, soft_prompt_layers: int = 3,
                 cross_attention: bool = True, heads: int = 8, mlp_dim: int = 1024, dropout: float = 0.1,
                 projector_hidden: int | None = None, queries_per_image: int = 6, favour_multi_instance: bool = False,
                 focal_weight: float = 20.0, dice_weight: float = 0.0, unmatched_weight: float = 0.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, score_threshold: float = 0.7,
                 nms_iou: float = 0.5, positions: str = "sine", tie_breaker_init: str = "random",
                 eval_limit: int | None = None,
                 disk_cache: bool = True, embeddings_in_memory: int = 4096, device: torch.device | str = "cpu"):
        super().__init__()
        if not isinstance(prompt_template, str) or "{}" not in prompt_template:
            raise bad_argument("prompt_template", 'a string with "{}" for the class name', prompt_template)
        if not isinstance(queries_per_image, int) or queries_per_image < 1:
            raise bad_argument("queries_per_image", "a positive int", queries_per_image)
        if positions not in POSITIONS:
            raise bad_argument("positions", f"one of {POSITIONS}", positions)
        if tie_breaker_init not in TIE_BREAKER_INITS:
            raise bad_argument("tie_breaker_init", f"one of {TIE_BREAKER_INITS}", tie_breaker_init)
        self.sam_adapter: SamAdapter = load_model(model, checkpoint=checkpoint, device=device)
        self.sam = self.sam_adapter.module  # registered (moves with .to), frozen
        self.sam.requires_grad_(False)
        self.positions = positions
        self._click_grid: dict[tuple[int, int], torch.Tensor] = {}
        self.text = TextEncoder(text_encoder, device=self.sam_adapter.device)  # frozen, not a submodule
        self.adapter = LanguageAdapter(
            self.text.dim, self.sam_adapter.token_dim, num_queries, projector_hidden, tie_breakers,
            tie_breaker_std, soft_prompt_layers, cross_attention, heads, mlp_dim, dropout,
            positions_in_values=positions == "clicks")
        if tie_breakers and tie_breaker_init != "random":
            with torch.no_grad():
                grid = self.grid_click_tokens(num_queries)
                if tie_breaker_init == "random_norm":
                    directions = torch.randn_like(grid)
                    grid = directions / directions.norm(dim=1, keepdim=True) * grid.norm(dim=1, keepdim=True)
                self.adapter.tie_breakers.copy_(grid)
        # Frozen encoder: each image is encoded once, then read from memory or disk (`samkit.cache`).
        self.encoder = CachedEncoder(self.sam_adapter, disk_cache=disk_cache, memory_items=embeddings_in_memory)
        self.train_data = build_dataset(train, "train")
        self.eval_data = {name: build_dataset(spec, f"eval_{name}")
                          for name, spec in (("base", eval_base), ("novel", eval_novel)) if spec is not None}
        self.prompt_template, self.queries_per_image = prompt_template, queries_per_image
        self.favour_multi_instance = favour_multi_instance
        self.loss_weights = {"focal_weight": focal_weight, "dice_weight": dice_weight,
                             "unmatched_weight": unmatched_weight, "alpha": focal_alpha, "gamma": focal_gamma}
        self.score_threshold, self.nms_iou, self.eval_limit = score_threshold, nms_iou, eval_limit
        self.switches = {"tie_breakers": tie_breakers, "soft_prompt_layers": soft_prompt_layers,
                         "cross_attention": cross_attention}

    def __len__(self) -> int:
        return len(self.train_data)

    # ---- data --------------------------------------------------------------------------
    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        sample = self.train_data[index]
        targets = class_targets(sample, stuff_classes_of(self.train_data))
        names = list(targets)
        count = min(self.queries_per_image, len(names))
        weights = np.array([len(targets[n]) for n in names], dtype=float) if self.favour_multi_instance \
            else np.ones(len(names))
        chosen = sorted(rng.choice(len(names), size=count, replace=False, p=weights / weights.sum()))
        return {"image": sample.image, "classes": [names[i] for i in chosen],
                "masks": [targets[names[i]] for i in chosen]}

    # ---- model -------------------------------------------------------------------------
    def text_vectors(self, class_names: Sequence[str]) -> torch.Tensor:
        """The frozen text encoder's vectors of the prompts for these class names (cached)."""
        return self.text.encode([self.prompt_template.format(name) for name in class_names])

    def query_tokens(self, embedding: ImageEmbedding, rows: Sequence[int], class_names: Sequence[str]) -> torch.Tensor:
        """Prompt tokens (Q, K, 256) for class query j on image rows[j] of `embedding`."""
        text = self.text_vectors(class_names).to(embedding.image_embed.device)
        if not self.adapter.reads_image:
            return self.adapter(text)
        image = embedding.image_embed[list(rows)]
        positions = self.click_grid(*image.shape[-2:]) if self.positions == "clicks" else None
        return self.adapter(text, image, positions)

    @torch.no_grad()
    def click_grid(self, height: int, width: int) -> torch.Tensor:
        """(height * width, 256): the prompt token SAM's own prompt encoder makes for a positive click
        at the centre of each cell of the image-embedding grid (positional encoding + label embedding)."""
        if (height, width) not in self._click_grid:
            frame = self.sam_adapter.image_size
            ys, xs = torch.meshgrid((torch.arange(height) + 0.5) * frame / height,
                                    (torch.arange(width) + 0.5) * frame / width, indexing="ij")
            points = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2)
            sparse, _ = self.sam_adapter.prompt_tokens(points=points, labels=torch.ones(len(points), 1))
            self._click_grid[(height, width)] = sparse[:, 0].detach()  # token 0: the click itself
        return self._click_grid[(height, width)]

    @torch.no_grad()
    def grid_click_tokens(self, count: int) -> torch.Tensor:
        """(count, 256): SAM's token for a positive click at each point of a rows x cols grid over the
        input frame (rows the largest divisor of count up to its square root: 4 x 5 for K = 20), row by row."""
        rows = max(d for d in range(1, int(math.isqrt(count)) + 1) if count % d == 0)
        cols = count // rows
        frame = self.sam_adapter.image_size
        ys, xs = torch.meshgrid((torch.arange(rows) + 0.5) * frame / rows, (torch.arange(cols) + 0.5) * frame / cols,
                                indexing="ij")
        points = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2)
        sparse, _ = self.sam_adapter.prompt_tokens(points=points, labels=torch.ones(len(points), 1))
        return sparse[:, 0].detach()  # token 0: the click itself

    def decode_tokens(self, embedding: ImageEmbedding, image_rows: Sequence[int],
                      tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ONE decoder call: token n (N, C) as a one-token prompt on image image_rows[n] of `embedding`
        -> (N, h, w) low-res logits and (N,) scores (SAM's single-mask output). Prompts on a single
        image share its embedding, which the decoder's shared-image path exploits."""
        image = embedding if len(embedding) == 1 else embedding.select(list(image_rows))
        low_res, scores = self.sam_adapter.decode(image, tokens[:, None, :], multimask=False)
        return low_res[:, 0], scores[:, 0]

    def decode_queries(self, embedding: ImageEmbedding, rows: Sequence[int],
                       tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All K queries of every class query j (on image rows[j]) in one decoder call: (Q, K, h, w)
        logits, (Q, K) scores. Without tie-breakers and soft-prompt layers (E1) the K queries are
        one vector K times: it is decoded once and its mask repeated (the same numbers, 1/K the work)."""
        queries, k, _ = tokens.shape
        if not self.adapter.distinct_queries:
            low_res, scores = self.decode_tokens(embedding, rows, tokens[:, 0])
            return (low_res[:, None].expand(-1, k, -1, -1), scores[:, None].expand(-1, k))
        low_res, scores = self.decode_tokens(embedding, [row for row in rows for _ in range(k)], tokens.flatten(0, 1))
        return low_res.reshape(queries, k, *low_res.shape[-2:]), scores.reshape(queries, k)

    def forward(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean over samples of each sample's mean class-query loss.

        With unmatched_weight 0 (the paper) only the matched predictions carry a loss, so the step
        runs in two passes with the same tokens: all K x Q queries decoded without gradients for the
        Hungarian matching, then only the matched ones (G per query, often 1-3 of K = 20) decoded
        again with gradients. The loss and its gradient are those of one pass, at a fraction of the
        backward work through SAM's decoder.
        """
        embedding = self.encoder.embed([sample["image"] for sample in batch])[0]
        rows = [b for b, sample in enumerate(batch) for _ in sample["classes"]]
        names = [name for sample in batch for name in sample["classes"]]
        targets = [masks for sample in batch for masks in sample["masks"]]
        tokens = self.query_tokens(embedding, rows, names)
        two_pass = not self.loss_weights["unmatched_weight"]
        with torch.no_grad() if two_pass else nullcontext():
            low_res, _ = self.decode_queries(embedding, rows, tokens.detach() if two_pass else tokens)
        goals = [low_res_targets(masks, embedding.input_sizes[row], self.sam_adapter.image_size,
                                 low_res.shape[-2:], low_res.device) for row, masks in zip(rows, targets)]
        matching = {key: self.loss_weights[key] for key in ("focal_weight", "alpha", "gamma")}
        assignments = [match_predictions(low_res[query], goal, **matching) if two_pass else None
                       for query, goal in enumerate(goals)]
        if two_pass:  # the matched tokens of every query, in one decoder call with gradients
            picked = torch.cat([tokens[query, torch.as_tensor(matched)] for query, (matched, _) in enumerate(assignments)])
            image_rows = [row for row, (matched, _) in zip(rows, assignments) for _ in matched]
            matched_logits = self.decode_tokens(embedding, image_rows, picked)[0].split(
                [len(matched) for matched, _ in assignments])
        losses = [[] for _ in batch]
        logs: dict[str, float] = {}
        for query, (row, goal) in enumerate(zip(rows, goals)):
            logits = matched_logits[query] if two_pass else low_res[query]
            loss, parts = matched_mask_loss(logits, goal, **self.loss_weights, assignment=assignments[query])
            losses[row].append(loss)
            for key, value in parts.items():
                logs[key] = logs.get(key, 0.0) + value / len(rows)
        total = sum(torch.stack(per_sample).mean() for per_sample in losses)
        return total / len(batch), logs

    # ---- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: np.ndarray, class_names: Sequence[str]) -> list[QueryOutput]:
        """K masks (at the image's size) and scores for each class name, from one decoder call."""
        if isinstance(class_names, str) or not class_names:
            raise bad_argument("class_names", "a non-empty list of class names", class_names)
        embedding = self.encoder.embed(image)[0]
        rows = [0] * len(class_names)
        low_res, scores = self.decode_queries(embedding, rows, self.query_tokens(embedding, rows, class_names))
        logits = self.sam_adapter.postprocess_masks(low_res, embedding.input_sizes[0], embedding.original_sizes[0])
        return [QueryOutput(name, logits[j], scores[j], self.sam_adapter.mask_threshold)
                for j, name in enumerate(class_names)]

    @torch.no_grad()
    def evaluate_on(self, data: Sequence, prompts: str | Sequence[str] = "oracle",
                    limit: int | None = None) -> Evaluation:
        """Instance and semantic numbers over `data` (at most `limit` samples).

        prompts: "oracle" asks each image for the classes it contains (the paper's Oracle-Prompts
        protocol); a list of class names asks every image for all of them (the small-scale
        analogue of Global-Matching: the model must also stay silent for absent classes).
        Metrics: instance_recall (ground-truth instances of asked thing classes matched by a kept
        mask at IoU >= 0.5), multi_instance_recall (the same for classes with >= 2 instances),
        ap50 (kept masks, pooled over queries), kept_per_query, false_masks_per_image (kept masks
        for classes the image lacks): "kept" by the paper's rule (score >= score_threshold, then
        NMS); the same keys ending in `_nms_only` skip the score filter (NMS alone), which separates
        the masks' quality from the frozen IoU head's scores. distinct_masks: mean number of
        differing masks among the K, over multi-instance queries; empty_queries: share of thing queries
        whose K masks are all empty. recall_at_k: instances that any of
        the K raw masks hits at IoU >= 0.5 (no score involved); multi_instance_coverage: share of
        multi-instance queries whose K masks hit >= 2 distinct instances. miou: semantic mIoU of the
        score-weighted merge over every asked class (stuff included). stuff_as_things: share of the
        stuff pixels that the merge gives to a thing class (stray thing masks taking background).
        """
        stuff = set(stuff_classes_of(data))
        rules = {"": self.score_threshold, "_nms_only": -math.inf}
        rows, pred_maps, truth_maps = [], [], []
        collected: dict[str, tuple[list, list, list]] = {rule: ([], [], []) for rule in rules}
        vocabulary: tuple[str, ...] = ()
        count = len(data) if limit is None else min(limit, len(data))
        for index in range(count):
            sample = data[index]
            vocabulary = vocabulary_of(sample)
            targets = class_targets(sample, stuff)
            names = list(targets) if isinstance(prompts, str) else list(prompts)
            if not names:
                continue
            outputs = self.predict(sample.image, names)
            for output in outputs:
                if output.class_name in stuff:
                    continue  # instance numbers are about things; stuff counts in the semantic map
                masks, scores = output.masks, output.scores
                absent = np.zeros((0, *masks.shape[1:]), bool)
                truth = torch.as_tensor(targets.get(output.class_name, absent), device=masks.device)
                row = {"image": index, "class_name": output.class_name, "instances": len(truth),
                       "distinct": distinct_masks(masks), "best_score": float(scores.max()),
                       # recall@K: instances that any of the K raw masks hits at IoU >= 0.5 (no score, no NMS)
                       "recalled_at_k": int((iou_matrix(truth, masks) >= 0.5).any(1).sum()) if len(truth) else 0}
                for rule, threshold in rules.items():
                    kept = select_instances(masks, scores, threshold, self.nms_iou)
                    hits = iou_matrix(truth, masks[kept]) >= 0.5 if len(truth) and len(kept) else None
                    row[f"recalled{rule}"] = 0 if hits is None else int(hits.any(1).sum())
                    row[f"kept{rule}"] = len(kept)
                    for store, value in zip(collected[rule], (masks[kept], scores[kept].float(), truth)):
                        store.append(value.cpu().numpy())
                rows.append(row)
            probabilities = torch.stack([class_probability(o.logits, o.scores) for o in outputs])
            pred_maps.append(semantic_merge(probabilities, [vocabulary.index(n) for n in names]))
            truth_maps.append(np.asarray(sample.semantic, dtype=np.int64))
        columns = ["image", "class_name", "instances", "distinct", "best_score", "recalled_at_k"] + \
            [f"{name}{rule}" for rule in rules for name in ("recalled", "kept")]
        table = pd.DataFrame(rows, columns=columns)
        metrics = {}
        for rule in rules:
            metrics.update({f"{key}{rule}": value for key, value in
                            instance_metrics(table, *collected[rule], suffix=rule).items()})
        multi, present = table[table["instances"] >= 2], table[table["instances"] > 0]
        metrics["distinct_masks"] = float(multi["distinct"].mean()) if len(multi) else float("nan")
        metrics["empty_queries"] = float((table["distinct"] == 0).mean()) if len(table) else float("nan")
        metrics["recall_at_k"] = float(present["recalled_at_k"].sum() / present["instances"].sum()) \
            if len(present) else float("nan")
        metrics["multi_instance_coverage"] = float((multi["recalled_at_k"] >= 2).mean()) if len(multi) else float("nan")
        metrics["miou"] = semantic_metric(pred_maps, truth_maps, vocabulary)
        metrics["stuff_as_things"] = stuff_taken_by_things(pred_maps, truth_maps, vocabulary, stuff)
        return Evaluation(metrics, table, Detections(*collected["_nms_only"]))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        metrics = {}
        for name, data in self.eval_data.items():
            result = self.evaluate_on(data, "oracle", self.eval_limit)
            metrics.update({f"{key}_{name}": value for key, value in result.metrics.items()})
        return metrics

    def describe(self) -> str:
        switches = ", ".join(f"{key}={value}" for key, value in self.switches.items())
        return f"openworld {self.sam_adapter.name} + {self.text.name} ({switches}): " + super().describe()


def instance_metrics(table: pd.DataFrame, masks: list, scores: list, truths: list,
                     suffix: str = "") -> dict[str, float]:
    """Recall, AP50 and mask counts from `evaluate_on`'s per-query table (columns `recalled{suffix}`,
    `kept{suffix}`) and the kept masks, their scores and the ground truth of each query."""
    nan = float("nan")
    present, multi = table[table["instances"] > 0], table[table["instances"] >= 2]
    absent = table[table["instances"] == 0]
    recalled, kept = f"recalled{suffix}", f"kept{suffix}"
    images = max(1, table["image"].nunique())
    return {
        "instance_recall": float(present[recalled].sum() / present["instances"].sum()) if len(present) else nan,
        "multi_instance_recall": float(multi[recalled].sum() / multi["instances"].sum()) if len(multi) else nan,
        "ap50": ap50(masks, scores, truths) if scores else nan,
        "kept_per_query": float(present[kept].mean()) if len(present) else nan,
        "false_masks_per_image": float(absent[kept].sum() / images),
    }


def stuff_taken_by_things(pred_maps: list[np.ndarray], truth_maps: list[np.ndarray], vocabulary: Sequence[str],
                          stuff: set[str]) -> float:
    """Share of ground-truth stuff pixels whose merged label is a thing class (NaN without stuff)."""
    stuff_ids = [i for i, name in enumerate(vocabulary) if name in stuff]
    if not pred_maps or not stuff_ids:
        return float("nan")
    truth_is_stuff = np.concatenate([np.isin(m.ravel(), stuff_ids) for m in truth_maps])
    pred_is_stuff = np.concatenate([np.isin(m.ravel(), stuff_ids) for m in pred_maps])
    return float((~pred_is_stuff[truth_is_stuff]).mean()) if truth_is_stuff.any() else float("nan")


def semantic_metric(pred_maps: list[np.ndarray], truth_maps: list[np.ndarray], vocabulary: Sequence[str]) -> float:
    """Semantic mIoU over all pixels of all images at once (one confusion matrix, as benchmarks do)."""
    if not pred_maps:
        return float("nan")
    ignore = 0 if vocabulary and vocabulary[0] == BACKGROUND else None  # readers: 0 is unlabelled
    return semantic_miou(np.concatenate([m.ravel() for m in pred_maps]),
                         np.concatenate([m.ravel() for m in truth_maps]), len(vocabulary), ignore)


__all__ = ["TIE_BREAKER_INITS", "Detections", "Evaluation", "LanguageAdapter", "OpenWorld", "QueryOutput", "SoftPromptLayer",
           "class_probability",
           "class_targets", "distinct_masks", "hungarian_match", "instance_metrics", "mask_nms",
           "match_predictions", "matched_mask_loss", "pairwise_dice_cost", "pairwise_focal_cost", "select_instances", "semantic_merge",
           "semantic_metric", "stuff_classes_of", "stuff_taken_by_things", "thing_classes_of",
           "vocabulary_of"]
