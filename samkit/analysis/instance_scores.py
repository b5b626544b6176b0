"""Instance numbers that do not lean on an uncalibrated score (OpenWorldSAM, notebook 04).

The paper's inference keeps a mask when SAM's predicted IoU is >= 0.7, then applies NMS. That rule
assumes the IoU head is calibrated on the prompts it sees; a frozen head trained on clicks and boxes
is not calibrated on learned queries. These functions read an evaluation's candidates
(`openworld.Detections`: the masks NMS alone keeps, their scores, the ground truth) without trusting
the score's scale:
- `threshold_sweep`: recall, AP50 and masks kept at every threshold instead of one;
- `ScoreCalibration`: isotonic regression (scikit-learn) from the raw score to the chance that the
  mask is a true positive, fitted on held-out scenes, so that a threshold means a probability;
- `largest_instance_hits`: which instance a collapsed query's one mask lands on (Fig. 3c's claim).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from samkit.errors import bad_argument
from samkit.methods.openworld import Detections
from samkit.metrics import ap50, iou_matrix


def true_positives(detections: Detections, iou_threshold: float = 0.5) -> list[np.ndarray]:
    """Per query, which candidates are true positives under COCO's matching: by descending score,
    each takes the unmatched instance of highest IoU >= iou_threshold; duplicates and strays are not."""
    hits = []
    for masks, scores, truth in zip(detections.masks, detections.scores, detections.truths):
        hit = np.zeros(len(scores), dtype=bool)
        if len(scores) and len(truth):
            ious = np.asarray(iou_matrix(masks, truth))
            taken = np.zeros(len(truth), dtype=bool)
            for candidate in np.argsort(-scores, kind="stable"):
                free = np.where(taken, -1.0, ious[candidate])
                best = int(np.argmax(free))
                if free[best] >= iou_threshold:
                    taken[best] = hit[candidate] = True
        hits.append(hit)
    return hits


def kept_at(detections: Detections, threshold: float, scores: Sequence[np.ndarray] | None = None) -> Detections:
    """The candidates whose score (or the given per-query `scores`) is >= threshold: what the rule
    "score >= threshold, then NMS" keeps (a mask is only suppressed by a higher-scoring one)."""
    scores = detections.scores if scores is None else scores
    keep = [np.asarray(s) >= threshold for s in scores]
    return Detections([m[k] for m, k in zip(detections.masks, keep)], [np.asarray(s)[k] for s, k in zip(scores, keep)],
                      list(detections.truths))


def instance_recall(detections: Detections, iou_threshold: float = 0.5) -> float:
    """Share of ground-truth instances that some candidate hits at IoU >= iou_threshold."""
    found = total = 0
    for masks, truth in zip(detections.masks, detections.truths):
        total += len(truth)
        if len(truth) and len(masks):
            found += int((np.asarray(iou_matrix(truth, masks)) >= iou_threshold).any(1).sum())
    return found / total if total else float("nan")


def threshold_sweep(detections: Detections, thresholds: Sequence[float]) -> pd.DataFrame:
    """One row per score threshold: kept_per_query, instance_recall, ap50 (COCOeval) of the kept masks."""
    if not len(detections):
        raise bad_argument("detections", "the candidates of at least one query", detections)
    rows = []
    for threshold in thresholds:
        kept = kept_at(detections, threshold)
        rows.append({"threshold": float(threshold), "kept_per_query": float(np.mean([len(s) for s in kept.scores])),
                     "instance_recall": instance_recall(kept), "ap50": ap50(kept.masks, kept.scores, kept.truths)})
    return pd.DataFrame(rows)


class ScoreCalibration:
    """Raw score -> probability that the mask is a true positive (isotonic regression, scikit-learn).

    Fit it on the candidates of held-out scenes (`fit`), then `apply` it to other candidates.
    The map is monotone, so it keeps the ranking; ties on its flat steps are broken by the raw score
    (a 1e-6 nudge), so that AP over all candidates is unchanged and only what a threshold keeps moves.
    """

    def __init__(self) -> None:
        self.model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        self.fitted = False

    def fit(self, detections: Detections, iou_threshold: float = 0.5) -> ScoreCalibration:
        scores = np.concatenate([np.asarray(s, dtype=np.float64) for s in detections.scores]) \
            if len(detections) else np.zeros(0)
        if scores.size < 2:
            raise bad_argument("detections", "at least 2 candidate masks to calibrate on", f"{scores.size}")
        hits = np.concatenate(true_positives(detections, iou_threshold)).astype(np.float64)
        self.model.fit(scores, hits)
        self.fitted, self.positives, self.candidates = True, int(hits.sum()), int(scores.size)
        return self

    @property
    def best_hit_rate(self) -> float:
        """The highest chance of a true positive that any raw score maps to: below 0.5, no score
        says "more likely a hit than not", and a calibrated threshold of 0.5 keeps nothing."""
        if not self.fitted:
            raise RuntimeError("ScoreCalibration: call fit(detections) first")
        return float(np.max(self.model.y_thresholds_))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("ScoreCalibration: call fit(detections) first")
        raw = np.asarray(scores, dtype=np.float64)
        if raw.size == 0:  # a query without candidates
            return raw.copy()
        return self.model.predict(raw.ravel()).reshape(raw.shape) + 1e-6 * raw

    def apply(self, detections: Detections) -> list[np.ndarray]:
        """The calibrated scores of every query's candidates."""
        return [self(s) for s in detections.scores]


def calibrated_ap50(detections: Detections, calibration: ScoreCalibration, threshold: float = 0.5) -> float:
    """AP50 (COCOeval) of the candidates whose calibrated chance of being a true positive is >= threshold."""
    kept = kept_at(detections, threshold, calibration.apply(detections))
    return ap50(kept.masks, kept.scores, kept.truths)


def largest_instance_hits(detections: Detections, iou_threshold: float = 0.5) -> dict[str, float]:
    """Where the best-scoring mask of each multi-instance query lands (the paper's Fig. 3c: a query
    without tie-breakers "segments only the most salient instance"; here salient = largest).

    Over queries with >= 2 instances: shares whose top mask hits the largest instance, another
    instance, none (an empty answer counts as none); `chance_largest`, the share expected if the mask
    hit one instance picked at random (mean 1/G); `covers_union`, IoU >= threshold with the union of
    all instances (the average of the targets that matching K identical queries to G targets pulls
    toward); and `queries`, how many there were.
    """
    landed = {"largest": 0, "other": 0, "none": 0, "union": 0}
    inverse_counts = []
    for masks, scores, truth in zip(detections.masks, detections.scores, detections.truths):
        if len(truth) < 2:
            continue
        inverse_counts.append(1 / len(truth))
        if not len(masks):
            landed["none"] += 1
            continue
        top = masks[int(np.argmax(scores))][None]
        ious = np.asarray(iou_matrix(top, truth))[0]
        largest = int(np.argmax(truth.reshape(len(truth), -1).sum(1)))
        landed["largest" if ious[largest] >= iou_threshold else "other" if (ious >= iou_threshold).any() else "none"] += 1
        landed["union"] += int(np.asarray(iou_matrix(top, truth.any(0)[None]))[0, 0] >= iou_threshold)
    count = len(inverse_counts)
    if not count:
        return {"queries": 0}
    return {"queries": count, "hits_largest": landed["largest"] / count, "hits_other": landed["other"] / count,
            "hits_none": landed["none"] / count, "chance_largest": float(np.mean(inverse_counts)),
            "covers_union": landed["union"] / count}


__all__ = ["ScoreCalibration", "calibrated_ap50", "instance_recall", "kept_at", "largest_instance_hits",
           "threshold_sweep", "true_positives"]
