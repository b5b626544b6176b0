"""TinySAM: the embedded default model, its checkpoint, and (`python -m samkit.models.tinysam train`) its training."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from samkit.checkpoints import CheckpointError, file_sha256, load_into, read_state_dict
from samkit.models.sam1 import SegmentAnythingAdapter
from samkit.models.tinysam_arch import build_tinysam

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
CHECKPOINT = DATA_DIR / "checkpoints" / "tinysam.safetensors"
CHECKPOINT_SHA = CHECKPOINT.with_name("tinysam.safetensors.sha256")


def load(checkpoint: str | os.PathLike | None, device: torch.device) -> SegmentAnythingAdapter:
    """TinySAM with the shipped weights (sha256-checked), another file, or "random" weights."""
    sam = build_tinysam()
    if checkpoint == "random":
        return SegmentAnythingAdapter(sam, "tinysam", None, device)
    path = Path(checkpoint) if checkpoint is not None else CHECKPOINT
    if checkpoint is None:
        if not CHECKPOINT.exists():
            raise CheckpointError(f"TinySAM's checkpoint is missing at {CHECKPOINT}; it ships with the "
                                  "repository (git checkout data/), or rebuild it: python -m samkit.models.tinysam train")
        expected = CHECKPOINT_SHA.read_text().split()[0]
        actual = file_sha256(CHECKPOINT)
        if actual != expected:
            raise CheckpointError(f"{CHECKPOINT} has sha256 {actual}, but {CHECKPOINT_SHA.name} says {expected}: "
                                  "the file is corrupt or was changed (git checkout data/ restores it)")
    state = read_state_dict(path, "tinysam")
    load_into(sam, state, "tinysam", path)
    return SegmentAnythingAdapter(sam, "tinysam", file_sha256(path), device)
