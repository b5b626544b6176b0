"""Mask losses shared by the training recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice per mask (VRP-SAM's and ProSAM's Eq. 4, CPC-SAM's L_SAM): (..., H, W) logits
    against an (H, W) or (..., H, W) {0, 1} target -> (...) losses."""
    target = target.to(logits).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(-2, -1))
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * target).sum((-2, -1)) + 1) / (prob.sum((-2, -1)) + target.sum((-2, -1)) + 1)
    return bce + dice


__all__ = ["bce_dice_loss"]
