"""Pre-training of the text-conditioned TinySAM (`samkit.models.text_tinysam`): segment a class from its name.

SSPrompt (paper 003) learns to re-weight the *default* prompts of a model that already segments
by name (SEEM). TinySAM was trained on clicks and boxes only, so this method gives it that
knowledge first: a class name's frozen MiniLM vector, through a linear projection, becomes one
prompt token; with the default spatial prompts (a grid of clicks, SSPrompt's Z_default^S) it goes
through TinySAM's mask decoder, and the decoder's single-mask output is that class's map. The
projection and the whole mask decoder train jointly, on TinySAM's frozen image embeddings
(cached), with the semantic loss of SSPrompt's Eq. 9 (pixel-wise cross-entropy over the classes).

`rare_classes` builds SSPrompt Fig. 3b's premise in on purpose: "some class names are poorly
learned by the pre-trained model". A rare class takes part in only `rare_rate` of the training
images; in the others it is left out of the softmax and its pixels count for nothing, so its
name gets a few per cent of the gradient the other names get, whatever its pixel share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from samkit.cache import CachedEncoder
from samkit.datasets.semantic import semantic_scores
from samkit.datasets.specs import semantic_data
from samkit.errors import bad_argument
from samkit.methods.base import Method, register_method
from samkit.methods.ssprompt import IGNORE, labels_on_grid, semantic_loss
from samkit.models.base import ImageEmbedding
from samkit.models.registry import load_model
from samkit.models.text_prompts import DefaultClicks, TextPromptEncoder, class_maps, class_mask_logits, point_grid


@register_method("text_tinysam")
class TextTinySamPretrain(Method):
    """Trains TinySAM's mask decoder and a text projection to segment classes by name (module docstring).

    train / eval: semantic data specs (plain ShapeScenes, all 15 classes). spatial_points: the
    default clicks (a square grid), as in SSPrompt. rare_classes / rare_rate: the names that take
    part in only that share of the training images. absent_names: names absent from an image that
    it is also asked for (negatives); the rest of the vocabulary is left out of that image's softmax.
    """

    def __init__(self, train: dict[str, Any], eval: dict[str, Any], model: str = "tinysam",
                 checkpoint: str | None = None, text_encoder: str = "minilm", spatial_points: int = 16,
                 rare_classes: Sequence[str] = (), rare_rate: float = 0.05, absent_names: int = 2, eval_batch: int = 8,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.adapter = load_model(model, checkpoint=checkpoint, device=device)
        self.sam = self.adapter.module
        self.sam.requires_grad_(False)
        self.adapter.mask_decoder.requires_grad_(True)
        self.train_data = semantic_data(train, "train")
        self.eval_data = semantic_data(eval, "eval")
        self.class_names = self.train_data.class_names
        if self.eval_data.class_names != self.class_names:
            raise bad_argument("eval", f"the classes of train {self.class_names}", self.eval_data.class_names)
        unknown = sorted(set(rare_classes) - set(self.class_names))
        if unknown:
            raise bad_argument("rare_classes", f"class names among {self.class_names}", unknown)
        if not 0.0 < rare_rate <= 1.0:
            raise bad_argument("rare_rate", "a share of the training images in (0, 1]", rare_rate)
        self.rare_ids = [self.class_names.index(name) for name in rare_classes]
        self.rare_rate, self.absent_names, self.eval_batch = float(rare_rate), int(absent_names), eval_batch
        self.text = TextPromptEncoder(text_encoder, self.adapter.token_dim, self.adapter.device)
        self.grid = point_grid(spatial_points)
        self.images = CachedEncoder(self.adapter, memory_items=len(self.train_data) + len(self.eval_data))
        self.default_clicks = DefaultClicks(self.adapter, self.grid)  # input size -> Z_default^S
        first_size = self.images.embed(self.train_data.item(0)[0])[0].input_sizes[0]
        self.text.match_strength(self.class_names, self.default_clicks(first_size)[: len(self.grid)])

    def __len__(self) -> int:
        return len(self.train_data)

    def class_logits(self, embedding: ImageEmbedding, class_names: Sequence[str] | None = None) -> torch.Tensor:
        """(B, C, h, w) low-res logits of every class name (all trained names by default)."""
        tokens = self.text(list(class_names or self.class_names))
        spatial = torch.stack([self.default_clicks(size) for size in embedding.input_sizes])
        return class_mask_logits(self.adapter, embedding, tokens, spatial)

    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """An image, its labels, and the names it is trained on: every class present (but the
        rare ones sitting it out) and `absent_names` absent ones, as negatives."""
        image, labels = self.train_data.item(index)
        present = set(np.unique(labels[labels >= 0]).tolist())
        hidden = {c for c in self.rare_ids if rng.random() >= self.rare_rate}  # rare names sit this image out
        absent = [c for c in range(len(self.class_names)) if c not in present and c not in hidden]
        negatives = rng.choice(absent, size=min(self.absent_names, len(absent)), replace=False) if absent else []
        queried = sorted((present - hidden) | {int(c) for c in negatives})
        return {"image": image, "labels": labels, "queried": queried}

    def forward(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 9's cross-entropy over each image's queried names (one decoder call per image, so its
        embedding is shared by its prompt sets); pixels of a rare name sitting out count for nothing."""
        embedding, _ = self.images.embed([sample["image"] for sample in batch])
        losses, correct, labelled = [], 0.0, 0
        for b, sample in enumerate(batch):
            image = embedding.select([b])
            logits = self.class_logits(image, [self.class_names[c] for c in sample["queried"]])[0]
            grid = labels_on_grid(sample["labels"], image.input_sizes[0], self.adapter.image_size,
                                  tuple(logits.shape[-2:])).to(logits.device)
            labels = torch.full_like(grid, IGNORE)
            for k, c in enumerate(sample["queried"]):  # class id -> its row among the queried names
                labels[grid == c] = k
            losses.append(semantic_loss(logits[None], labels[None]))
            known = labels != IGNORE
            correct += float((logits.argmax(0) == labels)[known].sum())
            labelled += int(known.sum())
        return torch.stack(losses).sum() / len(batch), {"pixel_accuracy": correct / max(1, labelled)}

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H, W) class maps: the argmax over every trained name, at full size."""
        embedding, _ = self.images.embed(list(images))
        logits = self.class_logits(embedding)
        return class_maps(self.adapter, embedding, logits)

    def evaluate(self) -> dict[str, float]:
        metrics, per_class = semantic_scores(self.predict, self.eval_data, self.eval_batch)
        rare = [per_class[self.class_names[c]] for c in self.rare_ids]
        common = [v for name, v in per_class.items() if self.class_names.index(name) not in self.rare_ids]
        metrics.update({f"iou_{name}": value for name, value in per_class.items()})
        if rare:
            metrics.update(miou_rare=float(np.nanmean(rare)), miou_common=float(np.nanmean(common)))
        return metrics

    def describe(self) -> str:
        rare = [self.class_names[c] for c in self.rare_ids]
        return (f"text_tinysam: {len(self.class_names)} names, {len(self.grid)} default clicks, rare {rare} at "
                f"{self.rare_rate:g}: " + super().describe())


__all__ = ["TextTinySamPretrain"]
