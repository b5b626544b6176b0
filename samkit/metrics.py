"""Segmentation metrics in numpy: dice, iou, miou, ciou, semantic mIoU, AP50 (COCOeval), pixel rates.

Masks may be bool or {0, 1} arrays (torch tensors are converted). Per-mask metrics take
one H x W mask or a batch B x H x W (giving B values). Convention: two empty masks
agree perfectly, so their dice and IoU are 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from samkit.errors import bad_argument


def _as_bool(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.dtype != bool:
        if not (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all()):
            raise bad_argument(name, "a bool or {0, 1} mask", array)
        array = array.astype(bool)
    return array


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _as_bool(pred, "pred"), _as_bool(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt: expected the same shape, got pred {pred.shape} "
                         f"and gt {gt.shape}")
    if pred.ndim < 2:
        raise bad_argument("pred", "an H x W mask or a B x H x W batch", pred)
    return pred, gt


def _counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-mask |pred & gt|, |pred|, |gt| summed over the last two axes."""
    axes = (-2, -1)
    return ((pred & gt).sum(axis=axes), pred.sum(axis=axes), gt.sum(axis=axes))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 1.0 where both are 0 (empty vs empty)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 1.0)


def _scalar_or_array(values: np.ndarray) -> float | np.ndarray:
    return float(values) if values.ndim == 0 else values


def dice(pred: Any, gt: Any) -> float | np.ndarray:
    """Dice = 2|P & G| / (|P| + |G|); a float for one mask, (B,) for a batch."""
    pred, gt = _pair(pred, gt)
    inter, n_pred, n_gt = _counts(pred, gt)
    return _scalar_or_array(_ratio(2 * inter, n_pred + n_gt))


def iou(pred: Any, gt: Any) -> float | np.ndarray:
    """IoU = |P & G| / |P | G|; a float for one mask, (B,) for a batch."""
    pred, gt = _pair(pred, gt)
    inter, n_pred, n_gt = _counts(pred, gt)
    return _scalar_or_array(_ratio(inter, n_pred + n_gt - inter))


def _pairs(preds: Any, gts: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Mask pairs from two batches or two equally long lists (masks may differ in size)."""
    if isinstance(preds, Sequence) and isinstance(gts, Sequence):
        if len(preds) != len(gts):
            raise ValueError(f"preds and gts: expected as many predictions as targets, "
                             f"got {len(preds)} and {len(gts)}")
        return [_pair(p, g) for p, g in zip(preds, gts)]
    pred, gt = _pair(preds, gts)
    if pred.ndim == 2:
        return [(pred, gt)]
    return list(zip(pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])))


def miou(preds: Any, gts: Any) -> float:
    """Mean over pairs of the per-pair IoU (every object counts the same)."""
    pairs = _pairs(preds, gts)
    if not pairs:
        raise bad_argument("preds", "at least one mask", preds)
    return float(np.mean([iou(p, g) for p, g in pairs]))


def ciou(preds: Any, gts: Any) -> float:
    """Cumulative IoU: total intersection / total union (large objects weigh more)."""
    pairs = _pairs(preds, gts)
    if not pairs:
        raise bad_argument("preds", "at least one mask", preds)
    inter = sum(int((p & g).sum()) for p, g in pairs)
    union = sum(int((p | g).sum()) for p, g in pairs)
    return float(_ratio(inter, union))


def semantic_miou(pred_labels: Any, gt_labels: Any, num_classes: int,
                  ignore_index: int | None = None) -> float:
    """Mean over classes of the per-class IoU of two label maps.

    Averages over the classes present in the ground truth or the prediction (a class
    absent from both says nothing). Pixels whose gt is `ignore_index` are left out.
    NaN if no pixel is left.
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_labels and gt_labels: expected the same shape, got "
                         f"pred_labels {pred.shape} and gt_labels {gt.shape}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise bad_argument("num_classes", "a positive int", num_classes)
    for name, labels in (("pred_labels", pred), ("gt_labels", gt)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise bad_argument(name, "an integer label map", labels)
    keep = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    pred, gt = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    for name, labels in (("pred_labels", pred), ("gt_labels", gt)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name}: expected labels in [0, {num_classes}), got values in "
                             f"[{labels.min()}, {labels.max()}]")
    if gt.size == 0:
        return float("nan")
    return float(np.nanmean(class_iou(confusion_matrix(pred, gt, num_classes))))


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """(C, C) pixel counts of two label maps, row = true class, column = predicted (one bincount);
    pixels whose label is `ignore_index` are left out."""
    keep = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    return np.bincount(labels[keep].astype(np.int64) * num_classes + predicted[keep].astype(np.int64),
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN for a class absent from truth and prediction."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def iou_matrix(a: Any, b: Any) -> Any:
    """(N, M) IoU between every mask of a (N, H, W) and every mask of b (M, H, W), with the kit's
    convention (two empty masks: 1.0). Torch tensors are computed in torch on their device (the
    result is a float tensor); anything else gives a float numpy array."""
    if hasattr(a, "detach") and hasattr(b, "detach"):  # torch tensors, without importing torch
        a_flat, b_flat = a.flatten(1).float(), b.flatten(1).float()
        inter = a_flat @ b_flat.T
        union = a_flat.sum(1)[:, None] + b_flat.sum(1)[None, :] - inter
        return (inter / union.clamp(min=1)).masked_fill(union == 0, 1.0)
    a, b = np.asarray(a), np.asarray(b)
    a_flat = a.reshape(len(a), -1).astype(np.float32)
    b_flat = b.reshape(len(b), -1).astype(np.float32)
    inter = a_flat @ b_flat.T
    union = a_flat.sum(1)[:, None] + b_flat.sum(1)[None, :] - inter
    return _ratio(inter, union)


def ap50(pred_masks: Any, scores: Any, gt_masks: Any) -> float:
    """Instance average precision at IoU 0.5 by pycocotools' COCOeval (the code behind published
    COCO numbers), for one image or a list of images.

    One image: pred_masks (P, H, W), scores (P,), gt_masks (G, H, W). Several: lists of those,
    one entry per image; one class (pool the classes' queries, or call once per class). COCOeval
    matches predictions by descending score to the unmatched target of highest IoU >= 0.5 and
    interpolates precision at 101 recall levels. An empty predicted mask never matches (IoU 0);
    an empty target is refused (it is no instance). No targets: 1.0 without predictions, 0.0 with any.
    """
    many = isinstance(scores, Sequence) and len(scores) > 0 and np.ndim(scores[0]) == 1
    if not many:
        pred_masks, scores, gt_masks = [pred_masks], [scores], [gt_masks]
    if not len(pred_masks) == len(scores) == len(gt_masks):
        raise ValueError(f"pred_masks, scores and gt_masks: expected one entry per image, got "
                         f"{len(pred_masks)}, {len(scores)} and {len(gt_masks)}")
    images = []
    for preds, image_scores, gts in zip(pred_masks, scores, gt_masks):
        preds, gts = _as_bool(preds, "pred_masks"), _as_bool(gts, "gt_masks")
        image_scores = np.asarray(image_scores, dtype=float).reshape(-1)
        if preds.ndim != 3 or gts.ndim != 3 or preds.shape[1:] != gts.shape[1:]:
            raise ValueError(f"pred_masks and gt_masks: expected (P, H, W) and (G, H, W) with "
                             f"the same H, W, got pred_masks {preds.shape} and gt_masks "
                             f"{gts.shape}")
        if len(image_scores) != len(preds):
            raise ValueError(f"scores: expected one score per mask ({len(preds)}), got "
                             f"{len(image_scores)}")
        if len(gts) and not gts.reshape(len(gts), -1).any(1).all():
            raise bad_argument("gt_masks", "non-empty target masks (an empty mask is no instance)", gts)
        images.append((preds, image_scores, gts))
    n_targets = sum(len(gts) for _, _, gts in images)
    n_predictions = sum(len(preds) for preds, _, _ in images)
    if n_targets == 0:
        return 1.0 if n_predictions == 0 else 0.0
    if n_predictions == 0:
        return 0.0
    return _cocoeval_ap50(images)


def _cocoeval_ap50(images: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask: np.ndarray) -> dict:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": encoded["size"], "counts": encoded["counts"]}

    records, annotations, detections = [], [], []
    for image_id, (preds, image_scores, gts) in enumerate(images, start=1):
        height, width = preds.shape[1:]
        records.append({"id": image_id, "height": int(height), "width": int(width)})
        for gt in gts:
            encoded = rle(gt)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "segmentation": encoded, "area": float(mask_utils.area(encoded)),
                                "bbox": [float(v) for v in mask_utils.toBbox(encoded)]})
        detections += [{"image_id": image_id, "category_id": 1, "segmentation": rle(pred), "score": float(score)}
                       for pred, score in zip(preds, image_scores)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), "segm")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.params.maxDets = [max(len(preds) for preds, _, _ in images)]
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, 0, 0, -1]  # 101 recall levels, the one class, all areas
    return round(float(precision.mean()), 10)  # COCOeval divides by tp + fp + eps: 1 comes back as 1 - 2e-16


def confusion_rates(pred: Any, gt: Any) -> dict[str, float]:
    """Pixel rates TPR, TNR, FPR, FNR over all pixels (NaN where undefined)."""
    pred, gt = _pair(pred, gt)
    tp, fp = float((pred & gt).sum()), float((pred & ~gt).sum())
    fn, tn = float((~pred & gt).sum()), float((~pred & ~gt).sum())
    positives, negatives = tp + fn, tn + fp
    nan = float("nan")
    return {
        "TPR": tp / positives if positives else nan,
        "TNR": tn / negatives if negatives else nan,
        "FPR": fp / negatives if negatives else nan,
        "FNR": fn / positives if positives else nan,
    }
