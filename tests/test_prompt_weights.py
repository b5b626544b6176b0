"""SSPrompt Fig. 3b's statistics (samkit.analysis.prompt_weights)."""

import numpy as np
import pytest

from samkit.analysis.prompt_weights import majority_baseline, partial_correlation, rare_gap
from samkit.datasets.semantic import class_pixel_counts, semantic_scores
from samkit.datasets.specs import semantic_data

SCENES = {"kind": "shapescenes", "classes": "all", "seed": 2, "size": 64}


def test_majority_baseline_labels_everything_as_the_commonest_training_class():
    train = semantic_data({**SCENES, "split": "train", "n": 6}, "train", None, None)
    test = semantic_data({**SCENES, "split": "val", "n": 3}, "test", None, None)
    metrics, iou, name = majority_baseline(train, range(6), test)
    counts = class_pixel_counts(train, range(6))
    assert name == train.class_names[int(np.argmax(counts))]
    others = [v for c, v in iou.items() if c != name]
    assert all(v == 0 or np.isnan(v) for v in others) and iou[name] > 0  # only the majority class scores
    test_counts = class_pixel_counts(test)
    assert iou[name] == pytest.approx(test_counts[train.class_names.index(name)] / test_counts.sum())
    assert metrics == semantic_scores(lambda ims: [np.full(im.shape[:2], train.class_names.index(name)) for im in ims],
                                      test)[0]


def test_class_pixel_counts_sum_to_the_labelled_pixels():
    data = semantic_data({**SCENES, "split": "train", "n": 2}, "train", None, None)
    counts = class_pixel_counts(data, [1])
    labels = data.item(1)[1]
    assert counts.sum() == (labels >= 0).sum() and counts.shape == (len(data.class_names),)


def test_rare_gap_and_its_errors():
    weights = {"rock": 0.4, "sponge": 0.5, "water": 0.7, "crab": 0.6}
    assert rare_gap(weights, ["rock", "sponge"], ["water", "crab"]) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="partners"):
        rare_gap(weights, ["rock"], ["kelp"])


def test_partial_correlation_removes_the_control():
    rng = np.random.default_rng(0)
    share = rng.normal(size=200)
    iou = share + 0.1 * rng.normal(size=200)
    weight = share + 0.1 * rng.normal(size=200)  # both follow the share, not each other
    assert np.corrcoef(iou, weight)[0, 1] > 0.9 and abs(partial_correlation(weight, iou, share)) < 0.2
    weight = weight + iou - share  # now weight also follows iou beyond the share
    assert partial_correlation(weight, iou, share) > 0.5
    with pytest.raises(ValueError, match="control"):
        partial_correlation([1, 2, 3], [1, 2, 3], [1, 2])
