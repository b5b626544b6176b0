"""Prompts made from ground-truth masks: clicks, boxes and low-resolution mask inputs.

Everything follows SAM's conventions: points are float (N, 2) arrays of (x, y) pixel
coordinates (x = column, y = row), labels are int (N,) with 1 = foreground and
0 = background, boxes are float (4,) arrays (x0, y0, x1, y1) with inclusive pixel
coordinates. Random prompts take an explicit `rng` (a numpy Generator) so that an
experiment is reproducible from its seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

from samkit.errors import bad_argument


def _as_mask(mask: Any, name: str = "mask", allow_empty: bool = False) -> np.ndarray:
    """`mask` as a 2-D bool array; bool or {0, 1} integer input only."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise bad_argument(name, "a 2-D H x W mask", array)
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.integer) or not np.isin(array, (0, 1)).all():
            raise bad_argument(name, "a bool or {0, 1} integer mask", array)
        array = array.astype(bool)
    if not allow_empty and not array.any():
        raise bad_argument(name, "a mask with at least one True pixel", array)
    return array


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise bad_argument("rng", "a numpy.random.Generator, e.g. np.random.default_rng(0)", rng)
    return rng


def _check_count(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise bad_argument(name, "a non-negative int", value)
    return int(value)


def _to_xy(flat_indices: np.ndarray, width: int) -> np.ndarray:
    rows, cols = np.divmod(flat_indices, width)
    return np.stack([cols, rows], axis=-1).astype(np.float32).reshape(-1, 2)


def center_point(mask: Any) -> np.ndarray:
    """The interior point farthest from the mask's boundary, as a (1, 2) array.

    Unlike the centroid it is always inside the object, even for rings and crescents.
    The image border counts as boundary, so the point keeps away from it too.
    """
    mask = _as_mask(mask)
    distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(np.argmax(distance), distance.shape)
    return np.array([[col, row]], dtype=np.float32)


def random_point(mask: Any, rng: np.random.Generator) -> np.ndarray:
    """One pixel of the mask drawn uniformly, as a (1, 2) array."""
    mask, rng = _as_mask(mask), _check_rng(rng)
    inside = np.flatnonzero(mask)
    return _to_xy(inside[rng.integers(inside.size)], mask.shape[1])


def negative_points(mask: Any, n: int, rng: np.random.Generator, other: Any = None) -> np.ndarray:
    """`n` background clicks (n, 2) for `mask`.

    With `other` (an H x W mask, a K x H x W stack or a list of masks, e.g. the other
    entities of the scene) the clicks land on those, which are the confusing negatives;
    otherwise anywhere outside the mask. Drawn without replacement when possible.
    """
    mask, rng, n = _as_mask(mask), _check_rng(rng), _check_count(n, "n")
    if other is None:
        region, region_name = ~mask, "mask"
    else:
        others = np.asarray(other)
        if others.ndim == 3:
            others = others.any(axis=0)
        others = _as_mask(others, "other", allow_empty=True)
        if others.shape != mask.shape:
            raise ValueError(f"other: expected masks of shape {mask.shape} like mask, "
                             f"got shape {others.shape}")
        region, region_name = others & ~mask, "other"
    candidates = np.flatnonzero(region)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if candidates.size == 0:
        raise bad_argument(region_name, "some pixels outside the object to put negatives on",
                           region)
    picked = rng.choice(candidates, size=n, replace=n > candidates.size)
    return _to_xy(picked, mask.shape[1])


def points_from_mask(mask: Any, n_pos: int, n_neg: int, rng: np.random.Generator,
                     other: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """`n_pos` random clicks inside and `n_neg` outside: (points (N, 2), labels (N,))."""
    mask, rng = _as_mask(mask), _check_rng(rng)
    n_pos, n_neg = _check_count(n_pos, "n_pos"), _check_count(n_neg, "n_neg")
    inside = np.flatnonzero(mask)
    positives = _to_xy(rng.choice(inside, size=n_pos, replace=n_pos > inside.size),
                       mask.shape[1])
    negatives = negative_points(mask, n_neg, rng, other=other)
    labels = np.concatenate([np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)])
    return np.concatenate([positives, negatives]), labels


def tight_box(mask: Any) -> np.ndarray:
    """The smallest box (x0, y0, x1, y1) holding the mask, inclusive pixel coordinates."""
    mask = _as_mask(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def _image_limits(mask: np.ndarray, image_size: Any) -> np.ndarray:
    height, width = mask.shape if image_size is None else image_size
    return np.array([width - 1, height - 1, width - 1, height - 1], dtype=np.float32)


def _sides(box: np.ndarray) -> np.ndarray:
    width, height = box[2] - box[0] + 1, box[3] - box[1] + 1
    return np.array([width, height, width, height], dtype=np.float32)


def _ordered(box: np.ndarray) -> np.ndarray:
    return np.array([min(box[0], box[2]), min(box[1], box[3]),
                     max(box[0], box[2]), max(box[1], box[3])], dtype=np.float32)


def jittered_box(mask: Any, rng: np.random.Generator, fraction: float = 0.1,
                 image_size: tuple[int, int] | None = None) -> np.ndarray:
    """The tight box with each side moved by noise of up to `fraction` of the box side.

    The usual box augmentation of SAM fine-tuning (e.g. MedSAM): normal noise with std
    fraction/2 of the side, clipped at `fraction`, then clamped to the image
    (`image_size` = (H, W), by default the mask's shape).
    """
    mask, rng = _as_mask(mask), _check_rng(rng)
    if not 0.0 <= fraction <= 0.5:
        raise bad_argument("fraction", "a float in [0, 0.5]", fraction)
    box = tight_box(mask)
    noise = np.clip(rng.normal(0.0, 0.5, size=4), -1.0, 1.0) * fraction * _sides(box)
    return _ordered(np.clip(box + noise, 0.0, _image_limits(mask, image_size)))


def random_annotation_box(mask: Any, rng: np.random.Generator, loose: float = 0.5,
                          cut: float = 0.25, shift: float = 0.2,
                          image_size: tuple[int, int] | None = None,
                          max_tries: int = 20) -> np.ndarray:
    """A box a careless annotator might draw: CPC-SAM's "random annotation" prompts.

    Each side independently moves out by up to `loose` or in by up to `cut` of the box
    side (uniformly), then the whole box shifts by up to `shift` of its size. Unlike
    `jittered_box` the errors are large and one-sided, but the box always still covers
    part of the object (redrawn until it does; the tight box after `max_tries`).
    """
    mask, rng = _as_mask(mask), _check_rng(rng)
    for name, value in (("loose", loose), ("cut", cut), ("shift", shift)):
        if not 0.0 <= value <= (0.49 if name == "cut" else 2.0):
            raise bad_argument(name, "a float in [0, 0.49]" if name == "cut"
                               else "a float in [0, 2]", value)
    tight = tight_box(mask)
    sides, limits = _sides(tight), _image_limits(mask, image_size)
    outward = np.array([-1.0, -1.0, 1.0, 1.0], dtype=np.float32)
    for _ in range(max_tries):
        moves = rng.uniform(-cut, loose, size=4) * sides * outward
        offset = rng.uniform(-shift, shift, size=2) * sides[:2]
        box = _ordered(np.clip(tight + moves + np.tile(offset, 2), 0.0, limits))
        x0, y0 = np.floor(box[:2]).astype(int)
        x1, y1 = np.ceil(box[2:]).astype(int)
        if mask[y0:y1 + 1, x0:x1 + 1].any():
            return box
    return tight


def mask_prompt(mask: Any, size: int = 256, logit: float = 10.0) -> np.ndarray:
    """A mask as SAM's `mask_input`: a 1 x size x size float32 array of logits.

    SAM reads mask inputs in the frame of its padded input: the image resized so its
    long side fits, then padded at the bottom and right. So the mask is resized the same
    way (nearest neighbour) and the padding is background (-logit).
    """
    mask = _as_mask(mask)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise bad_argument("size", "a positive int", size)
    height, width = mask.shape
    scale = size / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)  # as ResizeLongestSide
    rows = np.minimum(((np.arange(new_h) + 0.5) * height / new_h).astype(int), height - 1)
    cols = np.minimum(((np.arange(new_w) + 0.5) * width / new_w).astype(int), width - 1)
    prompt = np.full((1, size, size), -logit, dtype=np.float32)
    prompt[0, :new_h, :new_w] = np.where(mask[np.ix_(rows, cols)], logit, -logit)
    return prompt
