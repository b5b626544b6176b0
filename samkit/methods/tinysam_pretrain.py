"""`tinysam_pretrain`: TinySAM trained from scratch on ShapeScenes, SAM's recipe in miniature.

Per scene (a training sample): up to `targets_per_scene` masks (base entities, and with some
probability a background "stuff" region), one random prompt each: a click, several clicks, a
box, or a box and a click. A single click is ambiguous: it predicts three masks and learns from
the best one (min over candidates); every other prompt uses the single-mask output. Then one
round of iterative refinement for a share of the targets: a click in the largest error region
plus the previous low-res mask as `mask_input`. Loss: BCE + Dice on the masks (SAM's 20:1
focal:Dice collapses to "all background" when training from scratch at this scale), plus MSE
between predicted and actual IoU.

It trains through `samkit.train` like every method (`configs/tinysam_pretrain.yaml`), so a long
run resumes exactly from its `last` checkpoint. Every epoch draws fresh scenes (epoch e uses
scenes e * scenes_per_epoch ...), so no scene is seen twice. `python -m samkit.models.tinysam
train` runs this config and writes the checkpoint that ships.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from samkit.datasets import STUFF_CLASSES, Scene, ShapeScenes
from samkit.errors import bad_argument
from samkit.losses import bce_dice_loss
from samkit.methods.base import Method, register_method
from samkit.metrics import iou
from samkit.models.base import ImageEmbedding, SamAdapter
from samkit.models.registry import load_model
from samkit.models import tinysam
from samkit.models.tinysam import evaluate
from samkit.prompts import center_point, jittered_box, points_from_mask

PROMPT_KINDS = ("click", "clicks", "box", "box+click")
PROMPT_SHARES = (0.35, 0.15, 0.35, 0.15)
MIN_STUFF_PIXELS = 400  # background regions smaller than this are not targets


@dataclass
class Target:
    """One target mask with its prompt; `refine` targets get a second, corrective round."""

    mask: np.ndarray  # H x W bool
    points: np.ndarray  # (N, 2) float, may be empty
    labels: np.ndarray  # (N,)
    box: np.ndarray | None
    refine: bool = False


def sample_targets(scene: Scene, targets_per_scene: int, stuff_share: float, refine_share: float,
                   rng: np.random.Generator) -> list[Target]:
    """Up to `targets_per_scene` masks of `scene`, each with a random prompt."""
    stuff_ids = [ShapeScenes.class_id(name) for name in STUFF_CLASSES]
    masks = list(scene.instance_masks)
    stuff = [scene.semantic == c for c in stuff_ids if (scene.semantic == c).sum() > MIN_STUFF_PIXELS]
    chosen = [masks[i] for i in rng.permutation(len(masks))[:targets_per_scene]]
    if stuff and (rng.random() < stuff_share * targets_per_scene or not chosen):
        chosen = chosen[:targets_per_scene - 1] + [stuff[rng.integers(len(stuff))]]
    targets = []
    for mask in chosen:
        kind = rng.choice(PROMPT_KINDS, p=PROMPT_SHARES)
        points, labels, box = np.zeros((0, 2), np.float32), np.zeros(0, np.int64), None
        if kind == "click":
            points, labels = points_from_mask(mask, 1, 0, rng)
        elif kind == "clicks":
            points, labels = points_from_mask(mask, int(rng.integers(1, 4)), int(rng.integers(0, 3)), rng)
        else:
            box = jittered_box(mask, rng, fraction=0.1)
            if kind == "box+click":
                points, labels = points_from_mask(mask, 1, 0, rng)
        targets.append(Target(mask, points.astype(np.float32), labels, box))
    for row in rng.permutation(len(targets))[:max(1, round(refine_share * len(targets)))] if targets else ():
        targets[row].refine = True
    return targets


def padded_points(targets: list[Target]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack point sets of different lengths, padding with SAM's "not a point" label -1."""
    longest = max(1, max(len(t.points) for t in targets))
    coords = torch.zeros(len(targets), longest, 2)
    labels = -torch.ones(len(targets), longest, dtype=torch.int)
    for row, target in enumerate(targets):
        coords[row, :len(target.points)] = torch.as_tensor(target.points)
        labels[row, :len(target.points)] = torch.as_tensor(target.labels, dtype=torch.int)
    return coords, labels


def corrective_click(target: Target, previous: np.ndarray) -> None:
    """Add a click at the centre of the larger error region: positive on a miss, negative on a leak."""
    missed, leaked = target.mask & ~previous, ~target.mask & previous
    error, label = (missed, 1) if missed.sum() >= leaked.sum() else (leaked, 0)
    if error.any():
        target.points = np.concatenate([target.points, center_point(error)]).astype(np.float32)
        target.labels = np.concatenate([target.labels, [label]])


@register_method("tinysam_pretrain")
class TinySamPretraining(Method):
    """TinySAM's pre-training (see the module docstring); every part of SAM trains.

    scenes_per_epoch: fresh training scenes per epoch (base classes only); seed: their seed.
    focal_weight: add SAM's sigmoid focal loss with this weight (0: BCE + Dice only).
    val_scenes: base-class validation scenes for the per-epoch quality check.
    architecture: TinySAM's architecture when it starts from "random" weights (samkit.models.tinysam.ARCHITECTURES).
    """

    def __init__(self, scenes_per_epoch: int = 800, targets_per_scene: int = 4, stuff_share: float = 0.2,
                 refine_share: float = 0.25, focal_weight: float = 0.0, seed: int = 0, model: str = "tinysam",
                 checkpoint: str | None = "random", val_scenes: int = 20, image_size: int = 256,
                 architecture: str | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        for name, value in (("scenes_per_epoch", scenes_per_epoch), ("targets_per_scene", targets_per_scene)):
            if not isinstance(value, int) or value < 1:
                raise bad_argument(name, "an int >= 1", value)
        if model == "tinysam":  # the one model whose architecture is a choice
            self.adapter: SamAdapter = tinysam.load(checkpoint, torch.device(device), architecture)
        elif architecture is not None:
            raise bad_argument("architecture", "None unless model is tinysam", architecture)
        else:
            self.adapter = load_model(model, checkpoint=checkpoint, device=device)
        self.sam = self.adapter.module  # registered: every parameter trains
        self.sam.requires_grad_(True)
        self.scenes_per_epoch, self.targets_per_scene = scenes_per_epoch, targets_per_scene
        self.stuff_share, self.refine_share, self.focal_weight = stuff_share, refine_share, focal_weight
        self.val_scenes = val_scenes
        # Scene i depends only on (seed, split, i): an unbounded stream, read from epoch * scenes_per_epoch on.
        self.data = ShapeScenes("train", "base", n=2**31 - 1, seed=seed, size=image_size)

    def __len__(self) -> int:
        return self.scenes_per_epoch

    def scene(self, index: int) -> Scene:
        """Training scene `index` of the current epoch (scenes never repeat across epochs)."""
        return self.data[self.epoch * self.scenes_per_epoch + index]

    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        scene = self.scene(index)
        targets = sample_targets(scene, self.targets_per_scene, self.stuff_share, self.refine_share, rng)
        return {"image": scene.image, "targets": targets}

    # ---- the loss ------------------------------------------------------------------------------
    def target_losses(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M) per-candidate mask losses and actual IoUs of (B, M, H, W) logits against (B, H, W) masks."""
        target = masks[:, None].expand_as(logits)
        losses = bce_dice_loss(logits, target)
        if self.focal_weight:
            losses = losses + self.focal_weight * sigmoid_focal_loss(logits, target, reduction="none").mean((-2, -1))
        with torch.no_grad():
            actual = torch.as_tensor(iou((logits > 0).cpu().numpy(), (target > 0.5).cpu().numpy()),
                                     dtype=logits.dtype, device=logits.device)
        return losses, actual

    def decode(self, embedding: ImageEmbedding, targets: list[Target], multimask: bool,
               mask_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call for targets that share a token layout (clicks only, or a box each)."""
        boxes = np.stack([t.box for t in targets]) if targets[0].box is not None else None
        coords, labels = padded_points(targets)
        has_points = bool((labels >= 0).any())
        sparse, dense = self.adapter.prompt_tokens(
            points=coords if has_points or boxes is None else None,
            labels=labels if has_points or boxes is None else None, boxes=boxes, masks=mask_inputs)
        return self.adapter.decode(embedding, sparse, dense, multimask=multimask)

    def forward(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean over scenes of each scene's mean target loss (first round + refinement)."""
        embedding = self.adapter.embed([sample["image"] for sample in batch], grad=True)
        targets = [(scene, t) for scene, sample in enumerate(batch) for t in sample["targets"]]
        masks = torch.as_tensor(np.stack([t.mask for _, t in targets]), dtype=torch.float32,
                                device=self.adapter.device)
        size = tuple(masks.shape[-2:])
        per_target = torch.zeros(len(targets), device=masks.device)
        best_low_res = torch.zeros(len(targets), 1, *self.adapter.low_res_size, device=masks.device)
        logs: dict[str, float] = {}
        groups = {  # targets that share a token layout and output mode
            "click": [i for i, (_, t) in enumerate(targets) if t.box is None and len(t.points) == 1],
            "clicks": [i for i, (_, t) in enumerate(targets) if t.box is None and len(t.points) > 1],
            "box": [i for i, (_, t) in enumerate(targets) if t.box is not None],
        }
        for name, rows in groups.items():
            if not rows:
                continue
            low_res, iou_pred = self.decode(embedding.select([targets[r][0] for r in rows]),
                                            [targets[r][1] for r in rows], multimask=name == "click")
            logits = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
            losses, actual = self.target_losses(logits, masks[rows])
            best = losses.argmin(dim=1)
            mask_loss = losses.gather(1, best[:, None])[:, 0]
            per_target[rows] = per_target[rows] + mask_loss + ((iou_pred - actual) ** 2).mean(1)
            best_low_res[rows] = low_res.detach().gather(1, best[:, None, None, None].expand(-1, 1, *low_res.shape[-2:]))
            logs[f"loss_{name}"] = float(mask_loss.detach().mean())

        # Iterative refinement: a corrective click, plus the previous mask as the mask prompt.
        refine = [i for i, (_, t) in enumerate(targets) if t.refine]
        previous = (F.interpolate(best_low_res, size=size, mode="bilinear") > 0)[:, 0].cpu().numpy()
        for row in refine:
            corrective_click(targets[row][1], previous[row])
        for name, rows in (("refine_box", [r for r in refine if targets[r][1].box is not None]),
                           ("refine_points", [r for r in refine if targets[r][1].box is None])):
            if not rows:
                continue
            low_res, iou_pred = self.decode(embedding.select([targets[r][0] for r in rows]),
                                            [targets[r][1] for r in rows], multimask=False,
                                            mask_inputs=best_low_res[rows])
            logits = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
            losses, actual = self.target_losses(logits, masks[rows])
            per_target[rows] = per_target[rows] + losses[:, 0] + ((iou_pred - actual) ** 2)[:, 0]
            logs[f"loss_{name}"] = float(losses.detach().mean())

        scene_of = torch.as_tensor([scene for scene, _ in targets], device=masks.device)
        per_scene = torch.zeros(len(batch), device=masks.device).index_add(0, scene_of, per_target)
        counts = torch.bincount(scene_of, minlength=len(batch)).clamp(min=1)
        return (per_scene / counts).mean(), logs

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Box and best-of-3 click mIoU on `val_scenes` base-class validation scenes."""
        scores = evaluate(self.adapter, n=self.val_scenes, split="val", classes=("base",))
        return {key: value for key, value in scores.items() if key.endswith("_base") and "miou" in key}

    def describe(self) -> str:
        return f"tinysam_pretrain {self.adapter.name}: " + super().describe()


__all__ = ["PROMPT_KINDS", "Target", "TinySamPretraining", "corrective_click", "padded_points", "sample_targets"]
