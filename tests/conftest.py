"""Shared fixtures: a private cache folder, and checkpoints in the official formats built locally."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own SAMKIT_CACHE so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path_factory.mktemp("samkit-cache")))


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real, non-square photo (scikit-image's coffee cup, cropped to 400 x 600)."""
    from skimage import data

    return np.ascontiguousarray(data.coffee()[:, :])


@pytest.fixture(scope="session")
def tinysam_random():
    """TinySAM's architecture with random weights (seeded)."""
    import samkit

    torch.manual_seed(0)
    return samkit.load_model("tinysam", checkpoint="random", device="cpu")


@pytest.fixture(scope="session")
def tinysam_v2():
    """TinySAM v2's architecture (sam2's SAM2Base, Hiera trunk), seeded random weights; its skip
    projections start at zero, so they get random weights here, or the skips would add nothing."""
    torch.manual_seed(0)
    from samkit.models import tinysam

    model = tinysam.load("random", torch.device("cpu"), "hiera")
    with torch.no_grad():
        for projection in (model.module.sam_mask_decoder.conv_s0, model.module.sam_mask_decoder.conv_s1):
            projection.weight.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="session")
def scene_image() -> np.ndarray:
    """One ShapeScenes test scene with entities of every class set (256 x 256 RGB)."""
    from samkit.datasets import ShapeScenes

    return ShapeScenes("test", "all", n=1, seed=3)[0].image


@pytest.fixture(scope="session")
def official_checkpoints(tmp_path_factory):
    """`.pth` / `.pt` files for sam_vit_b and sam2.1_hiera_t with random weights, saved the way
    the official files are (a bare state_dict for SAM, {"model": state_dict} for SAM 2)."""
    from samkit.models.registry import _build_official

    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    paths = {}
    sam = _build_official("sam_vit_b")
    paths["sam_vit_b"] = folder / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), paths["sam_vit_b"])
    sam2 = _build_official("sam2.1_hiera_t")
    paths["sam2.1_hiera_t"] = folder / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": sam2.state_dict()}, paths["sam2.1_hiera_t"])
    return paths
