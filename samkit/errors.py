"""Input checks that fail with one clear message: the argument, what was expected, what came."""

from __future__ import annotations

from typing import Any

import numpy as np


def describe(value: Any) -> str:
    """A short description of a value for error messages (shape and dtype for arrays)."""
    if isinstance(value, np.ndarray):
        return f"array of shape {tuple(value.shape)} and dtype {value.dtype}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else f"{type(value).__name__} {text[:77]}..."


def bad_argument(name: str, expected: str, got: Any) -> ValueError:
    """The ValueError every public function raises for bad input."""
    return ValueError(f"{name}: expected {expected}, got {describe(got)}")
