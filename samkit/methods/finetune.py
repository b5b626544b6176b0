"""The `finetune` recipe: fine-tune SAM on base classes with box prompts, Dice on base and novel classes.

This is the experiment behind CPC-SAM's Fig. 1a (base-class Dice keeps rising while
novel-class Dice peaks early) and the baseline the other methods are compared with.
What trains is a choice:

- `trainable="lora"`: LoRA adapters (peft) on the attention projections of `lora_parts`
  (CPC-SAM's setting: rank 4 on the mask decoder), plus any `unfreeze` prefixes;
- `trainable="decoder"`: the whole mask decoder;
- `trainable="prompt_adapter"`: a small residual MLP on the box prompt tokens, SAM frozen.

Training boxes are tight, jittered (`box_jitter`), or with `prompt_draw="confounded"` drawn by
`samkit.datasets.confounded_boxes`: one side stretched by a rule that depends on the entity's
background and on an environment (CPC-SAM's task-irrelevant factor, built on purpose).
`box_context` lets the prompt adapter see the mean image feature under each box.

Whenever the image encoder is frozen its embeddings come from `samkit.cache`, so only the
first epoch runs the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from samkit.cache import CachedEncoder
from samkit.datasets.confounded_boxes import ENVIRONMENTS, confounded_box
from samkit.datasets.specs import build_dataset
from samkit.errors import bad_argument
from samkit.lora import add_lora
from samkit.losses import bce_dice_loss
from samkit.methods.base import Method, register_method
from samkit.metrics import dice
from samkit.models.base import ImageEmbedding, SamAdapter
from samkit.models.registry import load_model
from samkit.prompts import jittered_box, tight_box

TRAINABLE = ("lora", "decoder", "prompt_adapter")
PROMPT_DRAWS = ("jitter", "confounded")


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice per mask, averaged: (K, H, W) logits against (K, H, W) {0, 1} targets."""
    return bce_dice_loss(logits, target).mean()


def zero_output_mlp(dim: int, hidden: int, out_dim: int | None = None) -> nn.Sequential:
    """Linear-GELU-Linear whose last layer starts at zero: a token module that starts neutral."""
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim or dim))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def with_context(tokens: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """(P, N, C) tokens, each prompt's (P, D) context appended to every one of its tokens."""
    if context is None:
        return tokens
    return torch.cat([tokens, context[:, None].expand(-1, tokens.shape[1], -1).to(tokens)], dim=-1)


def pooled_under_boxes(embedding: ImageEmbedding, boxes: list[np.ndarray]) -> torch.Tensor:
    """(sum K_i, C): the mean image feature over the embedding cells each box covers (at least one).

    SAM resizes an image's longest side to its input size, which the h x h grid covers, so an
    original pixel is h / (longest side) cells."""
    pooled = []
    for i, image_boxes in enumerate(boxes):
        embed = embedding.image_embed[i]
        h, w = embed.shape[-2:]
        scale = h / max(embedding.original_sizes[i])  # original pixels -> cells
        for x0, y0, x1, y1 in np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4) * scale:
            c0, r0 = min(int(x0), w - 1), min(int(y0), h - 1)
            c1, r1 = max(c0 + 1, min(w, int(np.ceil(x1)))), max(r0 + 1, min(h, int(np.ceil(y1))))
            pooled.append(embed[:, r0:r1, c0:c1].mean(dim=(1, 2)))
    return torch.stack(pooled)


class PromptAdapter(nn.Module):
    """A residual 2-layer MLP on prompt tokens (and, with `context_dim`, each prompt's context
    such as the image feature under its box); zero-initialised output, so it starts as the identity."""

    def __init__(self, dim: int = 256, hidden: int = 256, context_dim: int = 0):
        super().__init__()
        self.mlp = zero_output_mlp(dim + context_dim, hidden, dim)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return tokens + self.mlp(with_context(tokens, context))


@register_method("finetune")
class Finetune(Method):
    """Box-prompted fine-tuning of SAM (see the module docstring).

    train / eval_base / eval_novel: dataset specs (see `samkit.datasets.specs`); eval_novel may
    be None for data sets without a novel split. instances_per_image: instances drawn per
    training image per step. box_jitter: training boxes are jittered by this fraction of their
    size (0 = tight boxes). Evaluation always uses tight boxes, every instance; `per_class` adds
    each class's mean Dice to `evaluate` (e.g. `dice_novel_shell`).
    """

    def __init__(self, train: dict[str, Any], eval_base: dict[str, Any], eval_novel: dict[str, Any] | None = None,
                 model: str = "tinysam", checkpoint: str | None = None, trainable: str = "lora",
                 lora_rank: int = 4, lora_parts: Sequence[str] = ("mask_decoder",), unfreeze: Sequence[str] = (),
                 instances_per_image: int = 4, box_jitter: float = 0.0, eval_batch: int = 8,
                 prompt_draw: str = "jitter", environments: Sequence[int] = (0, 1), box_context: bool = False,
                 per_class: bool = False, device: torch.device | str = "cpu"):
        super().__init__()
        if trainable not in TRAINABLE:
            raise bad_argument("trainable", f"one of {TRAINABLE}", trainable)
        if prompt_draw not in PROMPT_DRAWS:
            raise bad_argument("prompt_draw", f"one of {PROMPT_DRAWS}", prompt_draw)
        if not environments or not all(isinstance(e, int) and 0 <= e < len(ENVIRONMENTS) for e in environments):
            raise bad_argument("environments", f"a non-empty list of ints in [0, {len(ENVIRONMENTS)})", environments)
        self.prompt_draw, self.environments, self.box_context = prompt_draw, tuple(environments), bool(box_context)
        self.adapter: SamAdapter = load_model(model, checkpoint=checkpoint, device=device)
        self.sam = self.adapter.module  # registered here, so the trainer sees SAM's parameters
        self.sam.requires_grad_(False)
        dim = self.adapter.token_dim
        self.prompt_adapter = (PromptAdapter(dim, context_dim=dim if box_context else 0)
                               if trainable == "prompt_adapter" else None)
        if trainable == "lora":
            add_lora(self.sam, rank=lora_rank, parts=lora_parts, unfreeze=unfreeze, paths=self.adapter.part_paths)
            if "mask_decoder" in lora_parts:  # the fast path reads the base weights only (see samkit.lora)
                self.adapter.shared_image_decoding = False
        elif trainable == "decoder":
            self.adapter.mask_decoder.requires_grad_(True)
        self.encoder_trains = trainable == "lora" and "image_encoder" in lora_parts
        # A frozen encoder's embeddings are computed once; LoRA on the encoder makes them stale.
        self.encoder = None if self.encoder_trains else CachedEncoder(self.adapter, memory_items=4096)
        self.train_data = build_dataset(train, "train")
        self.eval_data = {"base": build_dataset(eval_base, "eval_base")}
        if eval_novel is not None:
            self.eval_data["novel"] = build_dataset(eval_novel, "eval_novel")
        self.instances_per_image, self.box_jitter, self.eval_batch = instances_per_image, box_jitter, eval_batch
        self.per_class = bool(per_class)

    def __len__(self) -> int:
        return len(self.train_data)

    # ---- data --------------------------------------------------------------------------
    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        sample = self.train_data[index]
        masks = sample.instance_masks[sample.instance_masks.any(axis=(1, 2))]
        chosen = rng.permutation(len(masks))[: self.instances_per_image]
        masks = masks[np.sort(chosen)]
        if self.prompt_draw == "confounded":  # one environment per sample, drawn from `environments`
            environment = self.environments[int(rng.integers(len(self.environments)))]
            boxes = self.confounded_set(sample, masks, environment, rng)
        else:
            boxes = [jittered_box(m, rng, self.box_jitter) if self.box_jitter else tight_box(m) for m in masks]
        return {"image": sample.image, "masks": masks, "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4)}

    @staticmethod
    def confounded_set(sample: Any, masks: np.ndarray, environment: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One confounded box per mask, drawn in `environment` (the sample's semantic map gives the background)."""
        semantic = getattr(sample, "semantic", None)
        if semantic is None:
            raise bad_argument("prompt_draw", "'jitter' for data without a semantic map (confounded boxes read "
                               "the background class: ShapeScenes)", "confounded")
        return [confounded_box(m, semantic, environment, rng) for m in masks]

    def box_contexts(self, embedding: ImageEmbedding, boxes: list[np.ndarray]) -> torch.Tensor | None:
        """The mean image feature under every box when `box_context`, else None."""
        return pooled_under_boxes(embedding, boxes) if self.box_context else None

    # ---- model -------------------------------------------------------------------------
    def embed(self, images: list[np.ndarray]) -> ImageEmbedding:
        if self.encoder is None:
            return self.adapter.embed(images, grad=self.training)
        return self.encoder.embed(images)[0]

    def box_tokens(self, embedding: ImageEmbedding, boxes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's sparse and dense prompt embeddings of every box, all images' boxes stacked in order."""
        tokens = [self.adapter.prompt_tokens(boxes=b, original_size=size)
                  for b, size in zip(boxes, embedding.original_sizes)]
        return torch.cat([t[0] for t in tokens]), torch.cat([t[1] for t in tokens])

    def mask_logits(self, embedding: ImageEmbedding, boxes: list[np.ndarray]) -> list[torch.Tensor]:
        """Box prompts (one (K_i, 4) array per image) -> (K_i, H_i, W_i) mask logits per image."""
        sparse, dense = self.box_tokens(embedding, boxes)
        if self.prompt_adapter is not None:
            sparse = self.prompt_adapter(sparse, self.box_contexts(embedding, boxes))
        rows = [i for i, b in enumerate(boxes) for _ in range(len(b))]
        low_res, _ = self.adapter.decode(embedding.select(rows), sparse, dense, multimask=False)
        return self.per_image_logits(low_res, embedding, boxes)

    def per_image_logits(self, low_res: torch.Tensor, embedding: ImageEmbedding,
                         boxes: list[np.ndarray]) -> list[torch.Tensor]:
        """(sum K_i, 1, h, w) low-res logits -> (K_i, H_i, W_i) logits at each image's size."""
        logits, start = [], 0
        for i, b in enumerate(boxes):
            part = low_res[start:start + len(b)]
            start += len(b)
            logits.append(self.adapter.postprocess_masks(part, embedding.input_sizes[i],
                                                         embedding.original_sizes[i])[:, 0])
        return logits

    def forward(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean over samples of each sample's mean instance loss.

        Averaging per sample, not per instance, makes a batch's loss the mean of its
        micro-batches' losses, so accumulation and DDP (which average) give the same step.
        """
        present = [sample for sample in batch if len(sample["masks"])]
        if not present:  # no instance of a kept class: a zero loss that still reaches every weight (DDP)
            return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad), {}
        embedding = self.embed([sample["image"] for sample in present])
        logits = self.mask_logits(embedding, [sample["boxes"] for sample in present])
        losses = [mask_loss(x, torch.as_tensor(sample["masks"]).to(x)) for x, sample in zip(logits, present)]
        return torch.stack(losses).sum() / len(batch), {}

    # ---- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def instance_dice(self, data, boxes: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dice and class name of every non-empty instance of `data`, each prompted with its tight
        box, or with its row of `boxes` (one (K_i, 4) array per sample, K_i its non-empty instances)."""
        if boxes is not None and len(boxes) != len(data):
            raise bad_argument("boxes", f"one box array per sample ({len(data)})", f"{len(boxes)} arrays")
        scores, classes = [], []
        for start in range(0, len(data), self.eval_batch):
            drawn = [(i, data[i]) for i in range(start, min(len(data), start + self.eval_batch))]
            drawn = [(i, s) for i, s in drawn if s.instance_masks.any()]
            if not drawn:
                continue
            indices, samples = zip(*drawn)
            present = [s.instance_masks.any(axis=(1, 2)) for s in samples]
            masks = [s.instance_masks[p] for s, p in zip(samples, present)]
            prompts = ([np.stack([tight_box(m) for m in ms]) for ms in masks] if boxes is None
                       else [np.asarray(boxes[i], dtype=np.float32).reshape(-1, 4) for i in indices])
            embedding = self.embed([s.image for s in samples])
            logits = self.mask_logits(embedding, prompts)
            for predicted, truth in zip(logits, masks):
                scores.extend(np.atleast_1d(dice((predicted > self.adapter.mask_threshold).cpu().numpy(), truth)))
            classes.extend(name for s, p in zip(samples, present) for name in np.asarray(s.class_names)[p])
        return np.asarray(scores, dtype=np.float64), np.asarray(classes, dtype=str)

    def dice_on(self, data) -> float:
        """Mean Dice over every instance of `data`, each prompted with its tight box."""
        return _mean_or_nan(self.instance_dice(data)[0])

    def evaluate(self) -> dict[str, float]:
        metrics = {}
        for name, data in self.eval_data.items():
            scores, classes = self.instance_dice(data)
            metrics[f"dice_{name}"] = _mean_or_nan(scores)
            if self.per_class:
                metrics.update({f"dice_{name}_{c}": float(scores[classes == c].mean())
                                for c in np.unique(classes)})
        return metrics

    def describe(self) -> str:
        return f"finetune {self.adapter.name}: " + super().describe()


def _mean_or_nan(scores: np.ndarray) -> float:
    """The mean, or nan when there is no instance of these classes."""
    return float(scores.mean()) if len(scores) else float("nan")
