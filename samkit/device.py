"""Pick a torch device without assuming CUDA: cuda, then mps, then cpu."""

from __future__ import annotations

import torch

from samkit.errors import bad_argument


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> the best available device; anything else is checked and returned."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise bad_argument("device", '"auto", "cpu", "cuda", "cuda:N" or "mps"', device) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise bad_argument("device", "an available device (CUDA is not available here)", device)
    return resolved
