"""Drawing helpers: they run headless and put the expected artists on the axes."""

from __future__ import annotations

import os

os.environ["MPLBACKEND"] = "Agg"  # before matplotlib is imported: no display in tests

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from samkit.datasets import ShapeScenes  # noqa: E402
from samkit.viz import (  # noqa: E402
    PALETTE,
    color_for,
    image_grid,
    show_box,
    show_mask,
    show_masks,
    show_points,
    show_scene,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def ax():
    return plt.subplots()[1]


def test_colours_are_fixed_by_index():
    assert color_for(3) == color_for(3) == color_for(3 + len(PALETTE))
    colours = [color_for(i)[:3] for i in range(len(PALETTE))]
    assert len(set(colours)) == len(PALETTE)
    assert color_for(0) == pytest.approx((30 / 255, 144 / 255, 1.0, 1.0))  # SAM's blue
    assert all(0.0 <= c <= 1.0 for colour in colours for c in colour)
    assert color_for(2, alpha=0.25)[3] == 0.25


def test_show_mask_paints_only_the_mask(ax):
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    assert show_mask(mask, ax, index=2, alpha=0.4) is ax
    (image,) = ax.images
    rgba = np.asarray(image.get_array())
    assert rgba.shape == (8, 10, 4)
    assert np.array_equal(rgba[..., 3] > 0, mask)
    np.testing.assert_allclose(rgba[mask][0], (*color_for(2)[:3], 0.4), atol=1e-6)
    show_mask(mask[None].astype(np.uint8), ax, color="red")  # SAM's 1 x H x W output
    np.testing.assert_allclose(np.asarray(ax.images[1].get_array())[3, 4], to_rgba("red", 0.5))


def test_show_points_green_positive_red_negative(ax):
    points = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    show_points(points, np.array([1, 0, 1]), ax, marker_size=50)
    positive, negative = ax.collections
    np.testing.assert_allclose(positive.get_offsets(), [[1, 2], [5, 6]])
    np.testing.assert_allclose(negative.get_offsets(), [[3, 4]])
    np.testing.assert_allclose(positive.get_facecolor()[0], to_rgba("green"))
    np.testing.assert_allclose(negative.get_facecolor()[0], to_rgba("red"))
    assert positive.get_sizes()[0] == 50
    with pytest.raises(ValueError, match="points and labels"):
        show_points(points, np.array([1]), ax)


def test_show_box(ax):
    show_box(np.array([2.0, 3.0, 12.0, 8.0]), ax)
    (box,) = ax.patches
    assert isinstance(box, Rectangle)
    assert box.get_xy() == (2.0, 3.0) and box.get_width() == 10.0 and box.get_height() == 5.0
    assert box.get_facecolor()[3] == 0.0  # unfilled


def test_show_masks_one_panel_per_candidate_best_starred():
    image = np.zeros((10, 12, 3), np.uint8)
    masks = np.zeros((3, 10, 12), bool)
    masks[0, :5], masks[1, 5:], masks[2, :, :6] = True, True, True
    axes = show_masks(image, masks, np.array([0.5, 0.9, 0.7]), points=np.array([[3, 4]]),
                      labels=np.array([1]), box=np.array([1, 1, 8, 8]))
    assert len(axes) == 3
    titles = [ax.get_title() for ax in axes]
    assert "0.900" in titles[1] and titles[1].startswith("\u2605")
    assert not titles[0].startswith("\u2605") and not titles[2].startswith("\u2605")
    for ax in axes:
        assert len(ax.images) == 2 and len(ax.collections) == 1 and len(ax.patches) == 1
    axes = show_masks(image, masks, [0.5, 0.9, 0.7], best=0)
    assert axes[0].get_title().startswith("\u2605")


def test_image_grid_layout():
    images = [np.zeros((5, 5)), np.ones((5, 5, 3))] * 3
    figure = image_grid(images, titles=[f"t{i}" for i in range(6)], ncols=4)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 8  # 2 rows of 4
    with_images = [ax for ax in figure.axes if ax.images]
    assert len(with_images) == 6 and with_images[5].get_title() == "t5"


def test_show_scene_labels_every_instance():
    scene = ShapeScenes(n=3, size=64, classes="all")[2]
    ax = show_scene(scene)
    assert len(ax.images) == 1 + len(scene.instance_classes)
    assert sorted(text.get_text() for text in ax.texts) == sorted(scene.class_names)
    figure = ax.figure
    figure.canvas.draw()  # renders without a display
