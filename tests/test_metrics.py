"""Metrics: algebraic properties (hypothesis) and hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from samkit.metrics import ap50, ciou, confusion_rates, dice, iou, miou, semantic_miou

# Small masks and few examples: the properties do not depend on size, the CPU budget does.
# No example database: the tests leave no .hypothesis/ folder in the repository.
fast = settings(max_examples=60, deadline=None, database=None)

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@st.composite
def mask_pairs(draw, batch: bool = False):
    shape = draw(shapes)
    if batch:
        shape = (draw(st.integers(1, 4)), *shape)
    return draw(arrays(bool, shape)), draw(arrays(bool, shape))


@st.composite
def label_maps(draw, classes: int = 4):
    return draw(arrays(np.int64, draw(shapes), elements=st.integers(0, classes - 1)))


@fast
@given(mask_pairs())
def test_values_are_in_unit_interval_and_symmetric(pair):
    pred, gt = pair
    for metric in (dice, iou):
        value = metric(pred, gt)
        assert isinstance(value, float) and 0.0 <= value <= 1.0
        assert value == metric(gt, pred)


@fast
@given(mask_pairs())
def test_dice_is_a_function_of_iou(pair):
    d, j = dice(*pair), iou(*pair)
    assert d >= j
    assert math.isclose(d, 2 * j / (1 + j), abs_tol=1e-12)


@fast
@given(arrays(bool, shapes))
def test_perfect_and_disjoint(mask):
    assert dice(mask, mask) == 1.0 and iou(mask, mask) == 1.0
    assert dice(mask, ~mask) == 0.0 and iou(mask, ~mask) == 0.0  # never both empty


def test_empty_vs_empty_is_perfect_and_empty_vs_object_is_zero():
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    assert dice(empty, empty) == iou(empty, empty) == 1.0
    assert dice(empty, full) == iou(full, empty) == 0.0
    assert miou([empty], [empty]) == ciou([empty], [empty]) == 1.0


@fast
@given(mask_pairs(batch=True))
def test_batched_equals_loop(pair):
    preds, gts = pair
    for metric in (dice, iou):
        batched = metric(preds, gts)
        assert batched.shape == (len(preds),)
        np.testing.assert_allclose(batched, [metric(p, g) for p, g in zip(preds, gts)])
    assert math.isclose(miou(preds, gts), float(np.mean(iou(preds, gts))))


def test_known_values_and_integer_input():
    pred = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    gt = np.array([[0, 1, 1, 0]], dtype=np.int64)
    assert iou(pred, gt) == pytest.approx(1 / 3)
    assert dice(pred, gt) == pytest.approx(0.5)


def test_ciou_weighs_large_objects_more_than_miou():
    big = np.zeros((20, 20), bool)
    big[:10] = True  # 200 pixels, found exactly
    small_gt, small_pred = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    small_gt[15, 15], small_pred[18, 18] = True, True  # 1 pixel, missed
    preds, gts = [big, small_pred], [big, small_gt]
    assert miou(preds, gts) == pytest.approx(0.5)
    assert ciou(preds, gts) == pytest.approx(200 / 202)
    assert ciou(np.stack(preds), np.stack(gts)) == pytest.approx(200 / 202)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred .*\(3, 4\).*gt .*\(4, 3\)"):
        dice(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match="preds and gts"):
        miou([np.zeros((2, 2), bool)], [])


def test_non_binary_masks_are_refused():
    with pytest.raises(ValueError, match="^pred: expected a bool or"):
        iou(np.full((2, 2), 0.7), np.ones((2, 2), bool))


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    pred = torch.tensor([[True, True], [False, False]])
    assert iou(pred, torch.ones(2, 2, dtype=torch.bool)) == 0.5
    assert dice(pred.int(), pred) == 1.0


# -- semantic mIoU ------------------------------------------------------------------------

@fast
@given(label_maps())
def test_semantic_miou_of_identical_maps_is_one(labels):
    assert semantic_miou(labels, labels, num_classes=4) == 1.0


def test_semantic_miou_known_example_and_ignore_index():
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    # The ignored pixel drops out of pred too. class 0: inter 1, union 3 (gt 2 + pred 2 - 1);
    # class 1: 2 / 3; class 2: 2 / 3.
    expected = (1 / 3 + 2 / 3 + 2 / 3) / 3
    assert semantic_miou(pred, gt, num_classes=3, ignore_index=255) == pytest.approx(expected)
    # Class 3 appears nowhere: it is left out of the mean rather than counted as 0 or 1.
    assert semantic_miou(pred, gt, num_classes=4, ignore_index=255) == pytest.approx(expected)
    with pytest.raises(ValueError, match="gt_labels: expected labels in"):
        semantic_miou(pred, gt, num_classes=3)


# -- AP50 --------------------------------------------------------------------------------

@st.composite
def instances(draw):
    """Disjoint non-empty instance masks cut from a random label map."""
    labels = draw(arrays(np.int64, (6, 6), elements=st.integers(0, 3)))
    masks = np.stack([labels == k for k in range(1, 4) if (labels == k).any()] or
                     [np.ones((6, 6), bool)])
    scores = draw(arrays(np.float64, len(masks), elements=st.floats(0, 1), unique=True))
    return masks, scores


@fast
@given(instances())
def test_ap50_is_one_for_perfect_predictions(data):
    masks, scores = data
    assert ap50(masks, scores, masks) == 1.0


@fast
@given(instances())
def test_ap50_is_zero_when_nothing_matches(data):
    masks, scores = data
    # Each prediction is the complement of its target: IoU with every target < 0.5 here.
    wrong = ~masks
    if any(iou(w, m) >= 0.5 for w in wrong for m in masks):
        return
    assert ap50(wrong, scores, masks) == 0.0


def test_ap50_known_example_with_a_false_positive_in_the_middle():
    gt = np.zeros((2, 4, 4), bool)
    gt[0, :2], gt[1, 2:] = True, True
    stray = np.zeros((4, 4), bool)
    stray[0, 0] = True  # IoU 1/8 with gt 0: a false positive
    preds = np.stack([gt[0], stray, gt[1]])
    scores = [0.9, 0.8, 0.7]
    # Precision/recall after each prediction: (1, .5), (.5, .5), (2/3, 1). Interpolated:
    # precision 1 for the 51 recall levels <= .5 and 2/3 for the 50 above.
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert ap50(preds, scores, gt) == pytest.approx(expected)
    # Scores decide the order: ranked last, the stray costs nothing.
    assert ap50(preds, [0.9, 0.1, 0.7], gt) == 1.0
    # A duplicate of an already matched target is a false positive too.
    assert ap50(np.stack([gt[0], gt[0]]), [0.9, 0.8], gt) == pytest.approx(51 / 101)


def test_ap50_over_several_images():
    gt = np.zeros((1, 4, 4), bool)
    gt[0, 1:3, 1:3] = True
    empty = np.zeros((0, 4, 4), bool)
    assert ap50([gt, gt], [np.array([0.5]), np.array([0.6])], [gt, gt]) == 1.0
    # Image 2 has one target and no prediction: recall can reach only 1/2.
    assert ap50([gt, empty], [np.array([0.5]), np.array([])], [gt, gt]) == pytest.approx(51 / 101)
    assert ap50(empty, [], empty) == 1.0  # nothing to find, nothing claimed
    assert ap50(gt, [0.5], empty) == 0.0


# -- pixel rates -------------------------------------------------------------------------

@fast
@given(mask_pairs())
def test_confusion_rates_complement_each_other(pair):
    rates = confusion_rates(*pair)
    assert set(rates) == {"TPR", "TNR", "FPR", "FNR"}
    if pair[1].any():
        assert rates["TPR"] + rates["FNR"] == pytest.approx(1.0)
    else:
        assert math.isnan(rates["TPR"])
    if not pair[1].all():
        assert rates["TNR"] + rates["FPR"] == pytest.approx(1.0)


def test_confusion_rates_known_example():
    pred = np.array([1, 1, 0, 0, 0], bool)[None]
    gt = np.array([1, 0, 1, 0, 0], bool)[None]
    assert confusion_rates(pred, gt) == pytest.approx(
        {"TPR": 0.5, "FNR": 0.5, "FPR": 1 / 3, "TNR": 2 / 3})


def test_iou_matrix_one_convention_in_torch_and_numpy():
    import torch

    from samkit.metrics import iou_matrix

    a = np.zeros((3, 4, 4), bool)
    a[0, :2] = True            # 8 pixels
    a[1, :, :1] = True         # 4 pixels, 2 shared with a[0]
    b = np.zeros((2, 4, 4), bool)
    b[0, :2] = True
    expected = np.array([[1.0, 0.0], [2 / 10, 0.0], [0.0, 1.0]])  # a[2] and b[1] are empty: they agree
    np.testing.assert_allclose(iou_matrix(a, b), expected)
    torch_result = iou_matrix(torch.as_tensor(a), torch.as_tensor(b))
    assert torch.is_tensor(torch_result)
    np.testing.assert_allclose(torch_result.numpy(), expected, rtol=1e-6)
    assert iou(a[2], b[1]) == 1.0  # the per-pair metric says the same


def test_ap50_is_cocoeval_with_empty_predicted_masks_and_no_empty_targets():
    # COCOeval (pycocotools) is the code behind published AP numbers; samkit.metrics.ap50 calls it.
    gt = np.zeros((2, 8, 8), bool)
    gt[0, :4, :4], gt[1, 4:, 4:] = True, True
    empty = np.zeros((8, 8), bool)
    half = gt[0].copy()
    half[:2] = False  # IoU 0.5 with gt 0: a hit at the threshold
    preds = np.stack([empty, half, gt[1]])
    # Ranked first, the empty mask is a false positive (IoU 0 with everything): precision (0, 1/2, 2/3)
    # at recall (0, 1/2, 1); interpolated (the best precision at any recall >= r), 2/3 at every level.
    assert ap50(preds, [0.9, 0.8, 0.7], gt) == pytest.approx(2 / 3)
    assert ap50(preds, [0.1, 0.8, 0.7], gt) == 1.0  # ranked last it costs nothing
    with pytest.raises(ValueError, match="gt_masks"):
        ap50(preds, [0.9, 0.8, 0.7], np.stack([gt[0], empty]))  # an empty target is no instance
