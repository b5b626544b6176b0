"""Score-free instance numbers (notebook 04): COCO's true positives, threshold sweeps, isotonic
calibration, and where a collapsed query's one mask lands."""

from __future__ import annotations

import numpy as np
import pytest

from samkit.analysis.instance_scores import (
    ScoreCalibration,
    calibrated_ap50,
    instance_recall,
    largest_instance_hits,
    threshold_sweep,
    true_positives,
)
from samkit.methods.openworld import Detections
from samkit.metrics import ap50


def _square(top: int, left: int, size: int, shape=(16, 16)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


BIG, SMALL = _square(0, 0, 8), _square(10, 10, 4)
TRUTH = np.stack([SMALL, BIG])  # the largest instance is not first


def test_true_positives_follow_cocos_matching_duplicates_and_strays_are_false():
    stray = _square(0, 12, 3)
    detections = Detections([np.stack([BIG, BIG, stray, SMALL])], [np.array([0.9, 0.8, 0.7, 0.1])], [TRUTH])
    assert true_positives(detections)[0].tolist() == [True, False, False, True]  # the duplicate of BIG is not


def test_threshold_sweep_keeps_what_the_threshold_keeps_and_matches_ap50():
    stray = _square(0, 12, 3)
    detections = Detections([np.stack([BIG, stray, SMALL])], [np.array([0.9, 0.6, 0.3])], [TRUTH])
    sweep = threshold_sweep(detections, [0.0, 0.5, 0.95]).set_index("threshold")
    assert sweep["kept_per_query"].tolist() == [3, 2, 0]
    assert sweep["instance_recall"].tolist() == [1.0, 0.5, 0.0]
    assert sweep.loc[0.5, "ap50"] == pytest.approx(ap50(np.stack([BIG, stray]), [0.9, 0.6], TRUTH))
    assert sweep.loc[0.0, "ap50"] == pytest.approx(ap50(np.stack([BIG, stray, SMALL]), [0.9, 0.6, 0.3], TRUTH))
    assert sweep.loc[0.95, "ap50"] == 0.0
    assert instance_recall(detections) == 1.0


def test_isotonic_calibration_maps_scores_to_the_hit_rate_and_keeps_the_ranking():
    # Held-out candidates whose raw scores are inverted in scale: hits score 0.2-0.3, strays 0.8-0.9.
    rng = np.random.default_rng(0)
    stray = _square(0, 12, 3)
    queries = 40
    masks = [np.stack([BIG, stray]) for _ in range(queries)]
    scores = [np.array([rng.uniform(0.2, 0.3), rng.uniform(0.4, 0.5)]) for _ in range(queries)]
    calibration = ScoreCalibration().fit(Detections(masks, scores, [TRUTH] * queries))
    calibrated = calibration(np.array([0.1, 0.25, 0.45, 0.9]))
    assert np.all(np.diff(calibrated) >= 0)  # monotone
    # Every hit scores below every stray, so the fitted hit rate cannot rise with the score: isotonic
    # regression pools everything into one step at the base rate, 1/2 (ties broken by the raw score).
    np.testing.assert_allclose(calibrated, 0.5, atol=1e-5)
    assert calibration.best_hit_rate == pytest.approx(0.5)
    assert calibration.positives == queries and calibration.candidates == 2 * queries
    # Held-out candidates with a useful score: hits high, strays low -> a threshold of 0.5 drops the strays.
    good = [np.array([rng.uniform(0.6, 0.7), rng.uniform(0.1, 0.2)]) for _ in range(queries)]
    calibration = ScoreCalibration().fit(Detections(masks, good, [TRUTH] * queries))
    assert calibration(np.array([0.15]))[0] == pytest.approx(0.0, abs=1e-5)
    assert calibration(np.array([0.65]))[0] == pytest.approx(1.0, abs=1e-5)
    test = Detections([np.stack([stray, BIG]), np.zeros((0, 16, 16), bool)], [np.array([0.15, 0.65]), np.zeros(0)],
                      [TRUTH, TRUTH])  # the second query has no candidate
    assert calibrated_ap50(test, calibration) == pytest.approx(
        ap50([BIG[None], np.zeros((0, 16, 16), bool)], [np.array([1.0]), np.zeros(0)], [TRUTH, TRUTH]))
    with pytest.raises(RuntimeError, match="fit"):
        ScoreCalibration()(np.array([0.5]))
    with pytest.raises(ValueError, match="detections"):
        ScoreCalibration().fit(Detections([np.zeros((1, 16, 16), bool)], [np.array([0.5])], [TRUTH]))


def test_largest_instance_hits_reads_where_the_top_mask_lands():
    union = BIG | SMALL
    detections = Detections(
        [np.stack([BIG]), np.stack([SMALL, BIG]), np.zeros((0, 16, 16), bool), np.stack([union]), np.stack([SMALL])],
        [np.array([0.5]), np.array([0.9, 0.1]), np.zeros(0), np.array([0.5]), np.array([0.5])],
        [TRUTH, TRUTH, TRUTH, TRUTH, SMALL[None]])  # the last has one instance: not counted
    result = largest_instance_hits(detections)
    assert result["queries"] == 4
    # BIG -> largest; top of the second is SMALL -> other; empty -> none; the union has IoU 64/80 with BIG.
    assert result["hits_largest"] == 0.5 and result["hits_other"] == 0.25 and result["hits_none"] == 0.25
    assert result["chance_largest"] == 0.5
    assert result["covers_union"] == 0.5  # BIG alone: 64/80 = 0.8 of the union; the union itself
