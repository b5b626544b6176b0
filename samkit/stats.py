"""Summaries over seeds and episodes: a mean with its 95% interval (Student's t)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from samkit.errors import bad_argument


def mean_ci95(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval) of independent values such as one number per seed.

    With n values the half-width is t_{(1 + level) / 2, n-1} * std / sqrt(n); one value has no
    interval (nan). `level` other than 0.95 serves corrections such as Bonferroni's: the best of
    k comparisons is judged with level 1 - 0.05 / k.
    """
    if not 0.0 < level < 1.0:
        raise bad_argument("level", "a coverage in (0, 1)", level)
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0 or not np.isfinite(array).all():
        raise bad_argument("values", "a non-empty sequence of finite numbers", values)
    if array.size == 1:
        return float(array[0]), float("nan")
    half = stats.t.ppf((1 + level) / 2, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size)
    return float(array.mean()), float(half)


def summary(values: Sequence[float] | np.ndarray, digits: int = 4) -> dict[str, float | list[float] | None]:
    """`mean_ci95` as a JSON-ready record: {"mean", "ci95" (None for one value), "values"}, rounded."""
    mean, half = mean_ci95(values)
    return {"mean": round(mean, digits), "ci95": None if np.isnan(half) else round(half, digits),
            "values": [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]}


__all__ = ["mean_ci95", "summary"]
