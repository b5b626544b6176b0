"""The mean and 95% interval over seeds."""

import math

import numpy as np
import pytest
from scipy import stats

from samkit.stats import mean_ci95, summary


def test_interval_is_students_t_and_one_value_has_none():
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci95([0.5])[1])
    rng = np.random.default_rng(0)
    covered = sum(abs(m) <= h for m, h in (mean_ci95(rng.normal(size=5)) for _ in range(2000)))
    assert 0.93 <= covered / 2000 <= 0.97  # a 95% interval covers the true mean 95% of the time
    wider = mean_ci95([1.0, 2.0, 3.0], level=1 - 0.05 / 3)[1]  # Bonferroni for the best of 3
    assert wider == pytest.approx(stats.t.ppf(1 - 0.05 / 6, 2) / math.sqrt(3), rel=1e-9) and wider > half


def test_bad_values_name_the_argument():
    with pytest.raises(ValueError, match="values"):
        mean_ci95([])
    with pytest.raises(ValueError, match="values"):
        mean_ci95([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        mean_ci95([1.0, 2.0], level=95)


def test_summary_is_the_interval_as_a_json_record():
    record = summary([1.0, 2.0, 3.0], digits=3)
    assert record == {"mean": 2.0, "ci95": round(4.302653 / math.sqrt(3), 3), "values": [1.0, 2.0, 3.0]}
    assert summary([0.25])["ci95"] is None  # one seed: no interval, and JSON-safe (not nan)
