"""A prompt generator trained on base classes: a click on an object -> a box for it.

CPC-SAM's Fig. 1b compares SAM fed by "a fixed pre-trained prompt generator, well trained on
the base classes" with SAM fed by expert prompts. Here the generator is a small head on the
frozen image embedding: it reads the features under a click (and the image's mean feature)
and regresses the object's box. It learns the extents and shapes of the base classes, so on
novel classes its boxes drift: the prompt bias the paper measures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from samkit.cache import CachedEncoder
from samkit.datasets.specs import build_dataset
from samkit.methods.base import Method, register_method
from samkit.metrics import iou
from samkit.models.base import ImageEmbedding
from samkit.models.registry import load_model
from samkit.prompts import center_point, random_point, tight_box


class BoxHead(nn.Module):
    """(B, C, h, w) embeddings + (B, 2) clicks in [0, 1] -> (B, 4) boxes in [0, 1] (x0, y0, x1, y1)."""

    def __init__(self, channels: int = 256, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * channels + 2, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 4))

    def forward(self, embed: Tensor, clicks: Tensor) -> Tensor:
        grid = (clicks * 2 - 1)[:, None, None, :]  # grid_sample's [-1, 1] frame
        local = F.grid_sample(embed, grid, align_corners=False)[:, :, 0, 0]
        features = torch.cat([local, embed.mean(dim=(2, 3)), clicks], dim=1)
        sides = F.softplus(self.mlp(features))  # distances from the click to the four sides
        return torch.cat([clicks - sides[:, :2], clicks + sides[:, 2:]], dim=1).clamp(0, 1)


@register_method("box_generator")
class BoxGenerator(Method):
    """Trains a `BoxHead` on the frozen model's embeddings with GIoU + L1 losses.

    train / eval_base / eval_novel: dataset specs; training clicks are random interior points,
    evaluation clicks the interior point farthest from the boundary.
    """

    def __init__(self, train: dict[str, Any], eval_base: dict[str, Any], eval_novel: dict[str, Any] | None = None,
                 model: str = "tinysam", checkpoint: str | None = None, instances_per_image: int = 6,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.adapter = load_model(model, checkpoint=checkpoint, device=device)
        self.adapter.module.requires_grad_(False)
        self.encoder = CachedEncoder(self.adapter, memory_items=4096)
        self.head = BoxHead(self.adapter.token_dim)
        self.train_data = build_dataset(train, "train")
        self.eval_data = {"base": build_dataset(eval_base, "eval_base")}
        if eval_novel is not None:
            self.eval_data["novel"] = build_dataset(eval_novel, "eval_novel")
        self.instances_per_image = instances_per_image

    def __len__(self) -> int:
        return len(self.train_data)

    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        sample = self.train_data[index]
        masks = sample.instance_masks[sample.instance_masks.any(axis=(1, 2))][: self.instances_per_image]
        return {"image": sample.image, "clicks": np.array([random_point(m, rng)[0] for m in masks]).reshape(-1, 2),
                "boxes": np.array([tight_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)}

    def predict(self, embedding: ImageEmbedding, clicks: list[np.ndarray]) -> list[np.ndarray]:
        """Clicks ((K_i, 2) pixels per image) -> boxes ((K_i, 4) pixels of each original image)."""
        rows = [i for i, c in enumerate(clicks) for _ in range(len(c))]
        scale = [np.array(embedding.original_sizes[i][::-1] * 2, dtype=np.float32) for i in rows]
        normalised = torch.as_tensor(np.concatenate(clicks) / np.stack(scale)[:, :2], dtype=torch.float32)
        boxes = self.head(self._padded_embed(embedding, rows), normalised.to(embedding.image_embed.device))
        pixels = boxes.detach().cpu().numpy() * np.stack(scale)
        return np.split(pixels, np.cumsum([len(c) for c in clicks])[:-1])

    def _padded_embed(self, embedding: ImageEmbedding, rows: list[int]) -> Tensor:
        """The embedding of each click's image, cropped to the image (SAM pads to a square)."""
        embed = embedding.image_embed[rows]
        height, width = embedding.input_sizes[rows[0]]
        side = self.adapter.image_size
        h, w = embed.shape[-2:]
        return embed[:, :, : max(1, round(h * height / side)), : max(1, round(w * width / side))]

    def forward(self, batch: list[dict[str, Any]]) -> tuple[Tensor, dict[str, float]]:
        present = [s for s in batch if len(s["boxes"])]
        if not present:
            return sum(p.sum() * 0.0 for p in self.head.parameters()), {}
        embedding, _ = self.encoder.embed([s["image"] for s in present])
        rows = [i for i, s in enumerate(present) for _ in range(len(s["boxes"]))]
        height, width = present[0]["image"].shape[:2]  # ShapeScenes-like: one image size per batch
        size = np.array([width, height] * 2, dtype=np.float32)
        clicks = torch.as_tensor(np.concatenate([s["clicks"] for s in present]) / size[:2], dtype=torch.float32)
        target = torch.as_tensor(np.concatenate([s["boxes"] for s in present]) / size, dtype=torch.float32)
        predicted = self.head(self._padded_embed(embedding, rows), clicks)
        loss = generalized_box_iou_loss(predicted, target, reduction="mean") + F.l1_loss(predicted, target)
        return loss, {}

    @torch.no_grad()
    def box_iou_on(self, data) -> float:
        """Mean IoU between generated and tight boxes (as masks) over every instance of `data`."""
        scores = []
        for sample in data:
            masks = sample.instance_masks[sample.instance_masks.any(axis=(1, 2))]
            if not len(masks):
                continue
            embedding, _ = self.encoder.embed(sample.image)
            boxes = self.predict(embedding, [np.array([center_point(m)[0] for m in masks])])[0]
            scores.extend(iou(box_mask(b, m.shape), box_mask(tight_box(m), m.shape)) for b, m in zip(boxes, masks))
        return float(np.mean(scores)) if scores else float("nan")

    def evaluate(self) -> dict[str, float]:
        return {f"box_iou_{name}": self.box_iou_on(data) for name, data in self.eval_data.items()}


def box_mask(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels a box covers, as a mask (to compare boxes with IoU)."""
    mask = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = np.round(box).astype(int)
    mask[max(0, y0):max(0, y1 + 1), max(0, x0):max(0, x1 + 1)] = True
    return mask
