"""Prompts from masks: where clicks land, how boxes move, SAM's coordinate conventions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from samkit import prompts
from samkit.prompts import (
    center_point,
    jittered_box,
    mask_prompt,
    negative_points,
    points_from_mask,
    random_annotation_box,
    random_point,
    tight_box,
)

H, W = 60, 90


def disk(cx: float, cy: float, radius: float, shape=(H, W)) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return (cols - cx) ** 2 + (rows - cy) ** 2 <= radius ** 2


def crescent() -> np.ndarray:
    return disk(45, 30, 20) & ~disk(52, 30, 17)  # its centroid is outside it


def inside(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0].astype(int), points[:, 1].astype(int)
    return mask[y, x]


def test_center_point_is_the_deepest_interior_point():
    point = center_point(disk(60, 25, 12))
    assert point.shape == (1, 2) and point.dtype == np.float32
    np.testing.assert_allclose(point[0], [60, 25], atol=1)  # (x, y), not (row, col)

    mask = crescent()
    rows, cols = np.nonzero(mask)
    assert not mask[int(rows.mean()), int(cols.mean())]  # the centroid would miss
    point = center_point(mask)
    assert inside(mask, point).all()
    depth = distance_transform_edt(mask)
    assert depth[int(point[0, 1]), int(point[0, 0])] == depth.max()


def test_center_point_keeps_away_from_the_image_border():
    mask = np.zeros((H, W), bool)
    mask[:, :30] = True  # touches three image borders
    x, y = center_point(mask)[0]
    # Without the border counting as boundary the deepest point would be at x = 0.
    assert 13 <= x <= 16 and 14 <= y <= H - 15


def test_random_points_fall_inside():
    mask, rng = crescent(), np.random.default_rng(0)
    points = np.concatenate([random_point(mask, rng) for _ in range(50)])
    assert inside(mask, points).all()
    assert np.array_equal(points, np.round(points))  # pixel coordinates
    assert len({tuple(p) for p in points}) > 10  # and they do vary


def test_negative_points_fall_outside_or_on_other_objects():
    mask, rng = disk(30, 30, 10), np.random.default_rng(1)
    negatives = negative_points(mask, 40, rng)
    assert negatives.shape == (40, 2) and not inside(mask, negatives).any()

    other = [disk(70, 30, 8), disk(20, 50, 5)]
    negatives = negative_points(mask, 30, rng, other=other)
    assert (inside(other[0] | other[1], negatives) & ~inside(mask, negatives)).all()
    assert negative_points(mask, 0, rng).shape == (0, 2)
    with pytest.raises(ValueError, match="other"):
        negative_points(mask, 3, rng, other=np.zeros((H, W), bool))


def test_points_from_mask_labels_and_positions():
    mask, other = disk(30, 30, 10), disk(70, 30, 8)
    points, labels = points_from_mask(mask, 3, 2, np.random.default_rng(2), other=other)
    assert points.shape == (5, 2) and labels.tolist() == [1, 1, 1, 0, 0]
    assert inside(mask, points[:3]).all() and inside(other, points[3:]).all()


def test_same_seed_same_prompts():
    mask = crescent()
    first = points_from_mask(mask, 2, 2, np.random.default_rng(9))
    again = points_from_mask(mask, 2, 2, np.random.default_rng(9))
    other = points_from_mask(mask, 2, 2, np.random.default_rng(10))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert np.array_equal(jittered_box(mask, np.random.default_rng(4)),
                          jittered_box(mask, np.random.default_rng(4)))


def test_tight_box_is_xyxy_inclusive():
    mask = np.zeros((H, W), bool)
    mask[10:20, 30:50] = True
    assert tight_box(mask).tolist() == [30, 10, 49, 19]


def test_jittered_box_stays_close_and_inside_the_image():
    rng = np.random.default_rng(3)
    mask = disk(45, 30, 15)
    tight = tight_box(mask)
    sides = np.array([31, 31, 31, 31])
    assert np.array_equal(jittered_box(mask, rng, fraction=0.0), tight)
    for _ in range(50):
        box = jittered_box(mask, rng, fraction=0.05)
        assert (np.abs(box - tight) <= 0.05 * sides + 1e-4).all()
    corner = disk(0, 0, 12)  # touches the top-left border: boxes must be clamped
    for _ in range(50):
        box = jittered_box(corner, rng, fraction=0.3, image_size=(H, W))
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= W - 1 and box[3] <= H - 1
        assert box[0] <= box[2] and box[1] <= box[3]


def test_random_annotation_boxes_are_sloppy_but_touch_the_object():
    rng = np.random.default_rng(5)
    mask = crescent()
    tight = tight_box(mask)
    sloppy = np.array([random_annotation_box(mask, rng) for _ in range(100)])
    careful = np.array([jittered_box(mask, rng, fraction=0.1) for _ in range(100)])
    for x0, y0, x1, y1 in sloppy:
        assert 0 <= x0 <= x1 <= W - 1 and 0 <= y0 <= y1 <= H - 1
        assert mask[int(y0):int(np.ceil(y1)) + 1, int(x0):int(np.ceil(x1)) + 1].any()
    assert np.abs(sloppy - tight).mean() > 2 * np.abs(careful - tight).mean()


def test_mask_prompt_matches_sams_padded_low_res_frame():
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True  # left half of a wide image
    prompt = mask_prompt(mask, logit=6.0)
    assert prompt.shape == (1, 256, 256) and prompt.dtype == np.float32
    assert set(np.unique(prompt)) == {-6.0, 6.0}
    assert (prompt[0, :128, :128] == 6.0).all()  # the long side fills 256: 100 -> 128 rows
    assert (prompt[0, :128, 128:] == -6.0).all()
    assert (prompt[0, 128:] == -6.0).all()  # padding below is background


@pytest.mark.parametrize("make", [
    lambda m, rng: center_point(m),
    lambda m, rng: random_point(m, rng),
    lambda m, rng: negative_points(m, 2, rng),
    lambda m, rng: points_from_mask(m, 1, 1, rng),
    lambda m, rng: tight_box(m),
    lambda m, rng: jittered_box(m, rng),
    lambda m, rng: random_annotation_box(m, rng),
    lambda m, rng: mask_prompt(m),
])
def test_empty_mask_is_refused(make):
    with pytest.raises(ValueError, match="^mask: expected a mask with at least one True"):
        make(np.zeros((H, W), bool), np.random.default_rng(0))


@pytest.mark.parametrize("bad", [
    np.ones((2, H, W), bool),  # a batch, not one mask
    np.ones(W, bool),
    np.full((H, W), 0.5),  # probabilities, not a mask
    np.full((H, W), 2, dtype=np.int64),
])
def test_bad_masks_are_refused(bad):
    with pytest.raises(ValueError, match="^mask: expected"):
        center_point(bad)


def test_integer_masks_and_rng_checks():
    mask = disk(30, 30, 5).astype(np.uint8)
    assert inside(mask.astype(bool), center_point(mask)).all()
    with pytest.raises(ValueError, match="^rng: expected"):
        random_point(mask, 0)
    with pytest.raises(ValueError, match="^fraction"):
        jittered_box(mask, np.random.default_rng(0), fraction=0.9)
    assert prompts.__doc__  # the module documents its conventions
