"""Drawing masks, clicks and boxes on matplotlib axes, in the style of SAM's notebooks.

Functions draw on the axes they are given and return them (or the new figure); they
never call plt.show(), so they work the same in Jupyter, scripts and tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from samkit.errors import bad_argument

# Fixed colours so that instance i has the same colour in every figure of the course.
# The first is the blue of SAM's own notebooks.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (30, 144, 255), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (23, 190, 207), (227, 119, 194), (188, 189, 34), (140, 86, 75), (255, 215, 0),
    (0, 128, 128), (128, 0, 0),
)


def color_for(index: int, alpha: float = 1.0) -> tuple[float, float, float, float]:
    """The RGBA colour (floats in [0, 1]) of instance `index`; the palette repeats."""
    red, green, blue = PALETTE[int(index) % len(PALETTE)]
    return (red / 255.0, green / 255.0, blue / 255.0, float(alpha))


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def show_mask(mask: Any, ax: Axes, color: Any = None, index: int = 0,
              alpha: float = 0.5) -> Axes:
    """Overlay a mask as a translucent colour (`color`, or the palette colour of `index`)."""
    mask = _as_array(mask)
    while mask.ndim > 2 and mask.shape[0] == 1:  # SAM returns masks as 1 x H x W
        mask = mask[0]
    if mask.ndim != 2:
        raise bad_argument("mask", "an H x W mask", mask)
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[mask.astype(bool)] = to_rgba(color if color is not None else color_for(index),
                                      alpha=alpha)
    ax.imshow(rgba, interpolation="nearest")
    return ax


def show_points(points: Any, labels: Any, ax: Axes, marker_size: int = 200) -> Axes:
    """Clicks as stars: green for foreground (label 1), red for background (label 0)."""
    points = _as_array(points).reshape(-1, 2)
    labels = _as_array(labels).reshape(-1)
    if len(points) != len(labels):
        raise ValueError(f"points and labels: expected one label per point, got "
                         f"{len(points)} points and {len(labels)} labels")
    for label, color in ((1, "green"), (0, "red")):
        chosen = points[labels == label]
        if len(chosen):
            ax.scatter(chosen[:, 0], chosen[:, 1], color=color, marker="*", s=marker_size,
                       edgecolor="white", linewidth=1.25)
    return ax


def show_box(box: Any, ax: Axes, color: Any = "green") -> Axes:
    """A box (x0, y0, x1, y1) as an unfilled rectangle."""
    x0, y0, x1, y1 = _as_array(box).reshape(4).tolist()
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, edgecolor=color,
                           facecolor=(0, 0, 0, 0), linewidth=2))
    return ax


def show_masks(image: Any, masks: Any, scores: Any, axes: Any = None, points: Any = None,
               labels: Any = None, box: Any = None, best: int | None = None) -> np.ndarray:
    """One panel per candidate mask (SAM's multimask output) with its score as title.

    The best candidate (`best`, by default the highest score) is starred in its title.
    Returns the array of axes used.
    """
    masks = _as_array(masks)
    masks = masks[None] if masks.ndim == 2 else masks
    scores = _as_array(scores).reshape(-1)
    if len(scores) != len(masks):
        raise ValueError(f"masks and scores: expected one score per mask, got {len(masks)} "
                         f"masks and {len(scores)} scores")
    best = int(np.argmax(scores)) if best is None else int(best)
    if axes is None:
        import matplotlib.pyplot as plt  # only when we make the figure ourselves

        _, axes = plt.subplots(1, len(masks), figsize=(4 * len(masks), 4), squeeze=False)
    axes = np.asarray(axes, dtype=object).reshape(-1)
    if len(axes) < len(masks):
        raise ValueError(f"axes: expected at least {len(masks)} axes, got {len(axes)}")
    for i, (ax, mask, score) in enumerate(zip(axes, masks, scores)):
        ax.imshow(_as_array(image))
        show_mask(mask, ax, index=i)
        if points is not None:
            show_points(points, labels, ax)
        if box is not None:
            show_box(box, ax)
        marker = "\u2605 " if i == best else ""  # a star for the best candidate
        ax.set_title(f"{marker}Mask {i + 1}, score {score:.3f}",
                     fontweight="bold" if i == best else "normal")
        ax.axis("off")
    return axes


def image_grid(images: Any, titles: Any = None, ncols: int = 4) -> Figure:
    """A grid of images (H x W grey or H x W x 3) with optional titles; returns the figure."""
    import matplotlib.pyplot as plt

    images = list(images)
    if not images:
        raise bad_argument("images", "at least one image", images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles: expected one title per image ({len(images)}), "
                         f"got {len(titles)}")
    ncols = max(1, min(int(ncols), len(images)))
    nrows = -(-len(images) // ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    for i, ax in enumerate(axes.reshape(-1)):
        ax.axis("off")
        if i < len(images):
            image = _as_array(images[i])
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            if titles is not None:
                ax.set_title(str(titles[i]))
    return figure


def show_scene(scene: Any, ax: Axes | None = None, alpha: float = 0.45) -> Axes:
    """A ShapeScenes scene: its image, each instance in its colour, labelled by class."""
    from samkit.prompts import center_point

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(scene.image)
    for i, (mask, name) in enumerate(zip(scene.instance_masks, scene.class_names)):
        show_mask(mask, ax, index=i, alpha=alpha)
        x, y = center_point(mask)[0]  # always inside the instance, unlike the centroid
        ax.text(x, y, name, color="white", fontsize=8, ha="center", va="center",
                bbox={"facecolor": color_for(i), "alpha": 0.8, "pad": 1.5, "linewidth": 0})
    ax.axis("off")
    return ax
