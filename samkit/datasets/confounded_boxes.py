"""Box prompts whose error is driven by a task-irrelevant factor: CPC-SAM's confounder, built on purpose.

CPC-SAM (Sec. 3.3) argues that annotators' boxes carry *task-irrelevant* factors F_ir^p (the
environment, the background) that SAM then learns to associate with the label, and that prompts
drawn under several environments, trained to agree (Theorem 1), remove them. Here the factor is
the background an entity lies on (sand, water or rock: the "stuff" class most common in a ring
around it), and an *environment* is a rule that maps each background to the side of the box an
annotator stretches: in environment 0 boxes on sand run long to the right, in environment 1 to
the bottom, and so on. The mapping differs between environments, and `TEST_ENVIRONMENT` uses a
side that no training environment uses for any background, so a calibration that learned one
environment's rule moves the wrong side at test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from samkit.datasets.shapescenes import STUFF_CLASSES, VOCABULARY
from samkit.errors import bad_argument
from samkit.prompts import tight_box

SIDES = ("left", "top", "right", "bottom")
# environment -> the side stretched for each background in STUFF_CLASSES order (sand, water, rock)
ENVIRONMENTS: tuple[tuple[str, str, str], ...] = (
    ("right", "top", "left"),
    ("bottom", "left", "top"),
    ("left", "bottom", "right"),
)
TEST_ENVIRONMENT = 2  # for every background a side that environments 0 and 1 do not use
_STUFF_IDS = np.array([VOCABULARY.index(name) for name in STUFF_CLASSES])


def background_of(mask: np.ndarray, semantic: np.ndarray, ring: int = 6) -> int:
    """The task-irrelevant factor of an entity: the index (into STUFF_CLASSES) of the background
    class most common in a `ring`-pixel band around `mask` (ties: the first class)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != semantic.shape or not mask.any():
        raise bad_argument("mask", f"a non-empty boolean mask of the semantic map's shape {semantic.shape}",
                           mask.shape)
    band = ndimage.binary_dilation(mask, iterations=ring) & ~mask
    counts = [np.count_nonzero(band & (semantic == stuff)) for stuff in _STUFF_IDS]
    return int(np.argmax(counts))


def stretched_box(mask: np.ndarray, side: str, amount: float) -> np.ndarray:
    """The tight box of `mask` with one side moved outward by `amount` times the box's size along
    that axis, clipped to the image: an annotator's one-sided error."""
    if side not in SIDES:
        raise bad_argument("side", f"one of {SIDES}", side)
    if not 0.0 <= amount <= 2.0:
        raise bad_argument("amount", "a fraction of the box size in [0, 2]", amount)
    box = tight_box(mask).astype(np.float32)
    height, width = np.asarray(mask).shape
    extent = (box[2] - box[0] + 1, box[3] - box[1] + 1)
    k = SIDES.index(side)
    outward = -1.0 if k < 2 else 1.0
    box[k] += outward * amount * extent[k % 2]
    return np.clip(box, 0.0, np.array([width - 1, height - 1, width - 1, height - 1], dtype=np.float32))


def confounded_box(mask: np.ndarray, semantic: np.ndarray, environment: int, rng: np.random.Generator,
                   stretch: tuple[float, float] = (0.6, 1.0)) -> np.ndarray:
    """A box drawn in `environment`: the side that the entity's background maps to is stretched by
    a uniform fraction in `stretch` of the box size; the other three sides are tight."""
    if not (isinstance(environment, (int, np.integer)) and 0 <= environment < len(ENVIRONMENTS)):
        raise bad_argument("environment", f"an int in [0, {len(ENVIRONMENTS)})", environment)
    low, high = stretch
    if not 0.0 <= low <= high <= 2.0:
        raise bad_argument("stretch", "(low, high) with 0 <= low <= high <= 2", stretch)
    side = ENVIRONMENTS[environment][background_of(mask, semantic)]
    return stretched_box(mask, side, float(rng.uniform(low, high)))


def confounded_boxes(scenes: Sequence, environment: int, seed: int = 0,
                     stretch: tuple[float, float] = (0.6, 1.0)) -> list[np.ndarray]:
    """`confounded_box` for every non-empty instance of every scene: one (K, 4) array per scene,
    seeded per scene index so any subset of scenes gets the same boxes."""
    boxes = []
    for scene in scenes:
        rng = np.random.default_rng([seed, environment, scene.index])
        masks = scene.instance_masks[scene.instance_masks.any(axis=(1, 2))]
        boxes.append(np.array([confounded_box(m, scene.semantic, environment, rng, stretch) for m in masks],
                              dtype=np.float32).reshape(-1, 4))
    return boxes


__all__ = ["ENVIRONMENTS", "SIDES", "TEST_ENVIRONMENT", "background_of", "confounded_box", "confounded_boxes",
           "stretched_box"]
