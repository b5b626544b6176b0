"""`samkit.setup(seed)`: the first call of every notebook: seeds and an environment report."""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from samkit.device import resolve_device


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch; return a NumPy Generator for explicit randomness."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def setup(seed: int = 0, verbose: bool = True) -> dict:
    """Seed everything and describe the environment (versions, device, profile)."""
    seed_everything(seed)
    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(resolve_device(os.environ.get("SAMKIT_DEVICE", "auto"))),
        "cpu_threads": torch.get_num_threads(),
        "profile": os.environ.get("SAMKIT_PROFILE", "class"),
        "seed": seed,
    }
    if verbose:
        print("  ".join(f"{key}={value}" for key, value in report.items()))
    return report
