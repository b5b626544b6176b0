"""The claims tables' verdict rule (samkit.claims)."""

import pytest

from samkit.claims import both, holds, points, verdict
from samkit.stats import summary


def test_holds_reads_direction_and_interval():
    assert holds(summary([0.10, 0.12, 0.11])) is True  # positive, interval excludes 0
    assert holds(summary([0.10, -0.02, 0.05])) is None  # positive mean, interval includes 0
    assert holds(summary([-0.10, -0.12, -0.11])) is False
    assert holds(summary([-0.10, -0.12, -0.11]), sign=-1) is True
    assert holds(summary([0.2])) is None  # one value: a direction, no interval


def test_verdict_rule():
    assert verdict(True, False) == "reproduced"
    assert verdict(True, True) == verdict(True, None) == "partly"  # the control shows it (or may)
    assert verdict(None, False) == "partly" and verdict(False, False) == "not"
    assert both(True, True) is True and both(True, None) is None and both(False, True) is False and both(None, False) is None


def test_points_and_bad_input():
    assert points(summary([0.10, 0.12, 0.11])) == "+11.0 ± 2.5"
    assert points(summary([-0.031])) == "-3.1"
    with pytest.raises(ValueError, match="sign"):
        holds(summary([0.1, 0.2]), sign=2)
    with pytest.raises(ValueError, match="effect"):
        holds({"mean": 0.1})
