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


class UnsupportedModelError(TypeError):
    """A model lacks a part a method needs (e.g. SAM's two-way transformer for CPC-SAM's calibration)."""


def call_with(factory: Any, arguments: dict[str, Any], name: str) -> Any:
    """`factory(**arguments)`, where an unknown or missing argument is a ValueError naming `name`.

    For constructors fed from config files: the keys come from a user's YAML, so a typo must
    say which entry it is in, not raise a bare TypeError from deep inside.
    """
    import inspect

    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as error:
        raise ValueError(f"{name}: {error}") from None
    return factory(**arguments)
