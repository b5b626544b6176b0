"""Measuring prompt bias (CPC-SAM Fig. 1b, 1c, 8): the same model, different box prompts, Dice per instance.

A *segmenter* is anything that turns an image and (K, 4) boxes into (K, H, W) masks: a plain
`Predictor`, or a trained method (whose `mask_logits` may re-weight the prompts first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from samkit.methods.box_generator import BoxGenerator, box_mask
from samkit.metrics import dice, iou
from samkit.predictor import Predictor
from samkit.prompts import center_point, jittered_box, tight_box

Segmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def predictor_segmenter(predictor: Predictor) -> Segmenter:
    """Boxes -> SAM's single-mask output (multimask off, as for box prompts)."""
    def segment(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        masks, _, _ = predictor.set_image(image).predict(box=boxes, multimask=False)
        return masks[:, 0]
    return segment


def method_segmenter(method) -> Segmenter:
    """Boxes -> a trained method's masks (its `mask_logits`, e.g. CPC-SAM's calibrated prompts)."""
    @torch.no_grad()
    def segment(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        method.eval()
        logits = method.mask_logits(method.embed([image]), [np.asarray(boxes, dtype=np.float32)])[0]
        return (logits > method.adapter.mask_threshold).cpu().numpy()
    return segment


def instances(scene) -> np.ndarray:
    """The non-empty instance masks of a scene."""
    return scene.instance_masks[scene.instance_masks.any(axis=(1, 2))]


def instance_classes(scenes: Sequence) -> np.ndarray:
    """The class name of every non-empty instance of `scenes`, in `dice_per_instance`'s order."""
    return np.array([name for s in scenes for name, m in zip(s.class_names, s.instance_masks) if m.any()], dtype=str)


def box_ious(boxes: Sequence[np.ndarray], reference: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """IoU of every box with its reference box (e.g. the expert's), both as `shape`-sized masks."""
    return np.array([iou(box_mask(b, shape), box_mask(r, shape))
                     for scene_boxes, scene_reference in zip(boxes, reference)
                     for b, r in zip(scene_boxes, scene_reference)], dtype=np.float64)


def expert_boxes(scenes: Sequence) -> list[np.ndarray]:
    """Fig. 1b's expert prompts: the tight box of every ground-truth instance."""
    return [np.array([tight_box(m) for m in instances(s)], dtype=np.float32).reshape(-1, 4) for s in scenes]


def generated_boxes(generator: BoxGenerator, scenes: Sequence) -> list[np.ndarray]:
    """Fig. 1b's generated prompts: the base-trained generator's box from a centre click per instance."""
    boxes = []
    with torch.no_grad():
        for scene in scenes:
            clicks = np.array([center_point(m)[0] for m in instances(scene)]).reshape(-1, 2)
            embedding, _ = generator.encoder.embed(scene.image)
            boxes.append(generator.predict(embedding, [clicks])[0].astype(np.float32))
    return boxes


def noisy_boxes(scenes: Sequence, fraction: float, seed: int = 0) -> list[np.ndarray]:
    """Expert boxes with each side moved by up to `fraction` of the box size (a known prompt error)."""
    rng = np.random.default_rng(seed)
    return [np.array([jittered_box(m, rng, fraction) for m in instances(s)], dtype=np.float32).reshape(-1, 4)
            for s in scenes]


def dice_per_instance(segment: Segmenter, scenes: Sequence, boxes: Sequence[np.ndarray]) -> np.ndarray:
    """Dice of every instance of `scenes`, prompted with its box in `boxes` (one array per scene)."""
    scores = []
    for scene, scene_boxes in zip(scenes, boxes):
        truth = instances(scene)
        if len(truth):
            scores.extend(np.atleast_1d(dice(segment(scene.image, scene_boxes), truth)))
    return np.asarray(scores, dtype=np.float64)
