"""Fixed 2-D sine/cosine position codes (DETR's), for attention over an image embedding's grid.

ProSAM's visual reference encoder and OpenWorldSAM's soft-prompt transformer both add them to
the image keys of their cross-attention, so queries can attend to *where* things are. They carry
no weights, so they work on any SAM's grid (16 x 16 for TinySAM, 64 x 64 for SAM ViT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from samkit.errors import bad_argument

GRIDS = ("centres", "corners")


def _axis(size: int, grid: str, device: torch.device | None) -> torch.Tensor:
    """Positions along one axis, in radians: cell centres (i + 1/2) / n, or 0..1 with both ends."""
    if grid == "centres":
        unit = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    else:
        unit = torch.linspace(0, 1, size, device=device)
    return unit * 2 * math.pi


def sine_positions(height: int, width: int, dim: int, temperature: float = 10000.0, grid: str = "centres",
                   device: torch.device | None = None) -> torch.Tensor:
    """(height * width, dim) codes, row-major like a flattened (h, w) map.

    Channels: sin and cos of the row angle, then of the column angle, at dim/4 frequencies
    1 / temperature^(k / (dim/4)) each; channels left over when dim is not a multiple of 4 are 0.
    grid: "centres" puts cells at (i + 1/2) / n (DETR), "corners" spreads them over 0..1.
    """
    if not isinstance(dim, int) or dim < 4:
        raise bad_argument("dim", "an int >= 4", dim)
    if grid not in GRIDS:
        raise bad_argument("grid", f"one of {GRIDS}", grid)
    quarter = dim // 4
    frequencies = 1.0 / (temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    row_angles = _axis(height, grid, device)[:, None] * frequencies[None]  # (h, dim/4)
    col_angles = _axis(width, grid, device)[:, None] * frequencies[None]  # (w, dim/4)
    row_part = torch.cat([row_angles.sin(), row_angles.cos()], dim=1)[:, None].expand(height, width, -1)
    col_part = torch.cat([col_angles.sin(), col_angles.cos()], dim=1)[None].expand(height, width, -1)
    code = torch.cat([row_part, col_part], dim=2).reshape(height * width, 4 * quarter)
    return F.pad(code, (0, dim - 4 * quarter))


__all__ = ["GRIDS", "sine_positions"]
