"""Reading SSPrompt's learned weights (Fig. 3b): baselines and the statistics of its claim.

The claim under test: the weight a class's learned prompt gives to its *default* prompt (1 - w of
Eq. 6) is lower where the pre-trained model knows the class name badly. The notebook builds that
cause in (names made rare in the text-conditioned TinySAM's pre-training) and reads it out with:
- `rare_gap`: the rare set's mean weight minus that of its partners (classes of about the same
  pixel share that stayed common), within one model;
- `partial_correlation`: weight vs the default prompt's IoU across classes, with pixel share
  (the gradient mass that drives any learned parameter) regressed out of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from samkit.datasets.semantic import SemanticData, class_pixel_counts, semantic_scores
from samkit.errors import bad_argument


def majority_baseline(train: SemanticData, train_indices: Sequence[int], test: SemanticData,
                      batch: int = 8) -> tuple[dict[str, float], dict[str, float], str]:
    """Scores of labelling every test pixel as the class with most training pixels: (metrics and
    per-class IoU as `semantic_scores` gives them, that class's name). The floor a semantic
    segmenter must clear before its per-class numbers mean anything."""
    if test.class_names != train.class_names:
        raise bad_argument("test", f"the classes of train {train.class_names}", test.class_names)
    majority = int(np.argmax(class_pixel_counts(train, train_indices)))
    constant = lambda images: [np.full(image.shape[:2], majority, dtype=np.int64) for image in images]  # noqa: E731
    metrics, iou = semantic_scores(constant, test, batch)
    return metrics, iou, train.class_names[majority]


def rare_gap(weights: Mapping[str, float], rare: Sequence[str], partners: Sequence[str]) -> float:
    """Mean weight over the `rare` classes minus the mean over their `partners` (negative: the rare
    set leans less on its default prompts)."""
    for name, group in (("rare", rare), ("partners", partners)):
        missing = [c for c in group if c not in weights]
        if not group or missing:
            raise bad_argument(name, f"a non-empty list of classes among {sorted(weights)}", list(group))
    return float(np.mean([weights[c] for c in rare]) - np.mean([weights[c] for c in partners]))


def partial_correlation(x: Sequence[float], y: Sequence[float], control: Sequence[float]) -> float:
    """Pearson correlation of x and y after a least-squares line in `control` is removed from each."""
    x, y, control = (np.asarray(v, dtype=np.float64).ravel() for v in (x, y, control))
    if not (x.size == y.size == control.size) or x.size < 4:
        raise bad_argument("x, y, control", "three sequences of one length, at least 4", (x.size, y.size, control.size))
    design = np.stack([np.ones_like(control), control], axis=1)
    residual = lambda v: v - design @ np.linalg.lstsq(design, v, rcond=None)[0]  # noqa: E731
    rx, ry = residual(x), residual(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


__all__ = ["majority_baseline", "partial_correlation", "rare_gap"]
