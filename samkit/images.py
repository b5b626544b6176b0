"""Turn whatever a learner passes as an image into one canonical form: H x W x 3 uint8 RGB."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from samkit.errors import bad_argument

ImageLike = Any  # numpy array (HxW, HxWx1/3/4; uint8 or float in [0, 1]) or a PIL image


def as_rgb_uint8(image: ImageLike, name: str = "image") -> np.ndarray:
    """Return `image` as a contiguous H x W x 3 uint8 RGB array.

    Accepts H x W grayscale, H x W x 1, H x W x 3, H x W x 4 (alpha dropped), uint8 or
    float in [0, 1], and PIL images.
    """
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL, without importing it
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise bad_argument(name, "a numpy array or a PIL image", image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise bad_argument(name, "an H x W, H x W x 3 or H x W x 4 image", image)
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise bad_argument(name, "a non-empty image", image)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0:
            raise bad_argument(name, "float values in [0, 1]",
                               f"values in [{np.nanmin(image):.3g}, {np.nanmax(image):.3g}]")
        return np.ascontiguousarray(np.round(image * 255.0).astype(np.uint8))
    raise bad_argument(name, "dtype uint8 or float in [0, 1]", image)


def image_sha256(image: np.ndarray) -> str:
    """Content hash of a canonical image (shape included, so a reshaped buffer differs)."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()
