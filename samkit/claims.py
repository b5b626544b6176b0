"""Verdicts for the notebooks' claims tables, by one stated rule.

A claim's effect is a `stats.summary` over seeds ({"mean", "ci95", "values"}). **reproduced**: the
paper's direction holds with the 95% interval excluding zero, and the control that removes the
cause does not show it; **partly**: the direction holds but the interval includes zero, or the
control shows it too; **not**: otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from samkit.errors import bad_argument

VERDICTS = ("reproduced", "partly", "not")


def holds(effect: Mapping[str, Any], sign: int = 1) -> bool | None:
    """True: sign * mean > 0 with the interval excluding 0; None: the direction only; False: not even that."""
    if sign not in (1, -1):
        raise bad_argument("sign", "1 (the effect is positive) or -1 (negative)", sign)
    if not isinstance(effect, Mapping) or "mean" not in effect or "ci95" not in effect:
        raise bad_argument("effect", "a stats.summary record with 'mean' and 'ci95'", effect)
    if sign * effect["mean"] <= 0:
        return False
    return True if effect["ci95"] is not None and sign * effect["mean"] > effect["ci95"] else None


def both(first: bool | None, second: bool | None) -> bool | None:
    """Two conditions of one claim: True if both hold, False if the first fails, else the direction only."""
    return True if first is True and second is True else (False if first is False else None)


def verdict(effect: bool | None, control_shows_it: bool | None) -> str:
    """The rule of the module docstring, from `holds` of the effect and of its control."""
    if effect is True and control_shows_it is False:
        return "reproduced"
    return "partly" if effect is not False else "not"


def described(effect: Mapping[str, Any], sign: int = 1) -> str:
    """What one effect shows, in the words of the verdict rule (for a claims table's "why")."""
    found = holds(effect, sign)
    return ("holds, interval excludes 0" if found is True else
            "paper's direction, interval includes 0" if found is None else "not in the paper's direction")


def points(effect: Mapping[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """'+3.1 ± 0.4': a summary's mean and interval, in points of 100 by default."""
    mean = f"{scale * effect['mean']:+.{digits}f}"
    return mean if effect["ci95"] is None else f"{mean} ± {scale * effect['ci95']:.{digits}f}"


__all__ = ["VERDICTS", "both", "described", "holds", "points", "verdict"]
