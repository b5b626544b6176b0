"""`load_model(name)`: one entry point for TinySAM, SAM, SAM 2.1 and transformers models."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from samkit.checkpoints import OFFICIAL_CHECKPOINTS, fetch_checkpoint, file_sha256, load_into, read_state_dict
from samkit.device import resolve_device
from samkit.errors import bad_argument
from samkit.models.base import SamAdapter

SAM1_BUILDERS = {"sam_vit_b": "build_sam_vit_b", "sam_vit_l": "build_sam_vit_l", "sam_vit_h": "build_sam_vit_h"}
SAM2_NAMES = ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l")
KNOWN_MODELS = ("tinysam", "text_tinysam", "text_tinysam_swap", *SAM1_BUILDERS, *SAM2_NAMES, "hf:<repo id or folder>")

RANDOM = "random"  # checkpoint=RANDOM: the architecture with random weights (timing, tests)


def load_model(name: str = "tinysam", checkpoint: str | os.PathLike | None = None,
               device: str | torch.device = "auto") -> SamAdapter:
    """Build model `name` and load its weights; return it behind the samkit seam.

    name: "tinysam" (shipped with samkit), "text_tinysam" / "text_tinysam_swap" (TinySAM that
      segments by class name, `samkit.models.text_tinysam`; the adapter's `text_prompts` turns
      names into its prompt tokens), "sam_vit_b|l|h" (segment_anything),
      "sam2.1_hiera_t|s|b+|l" (sam2) or "hf:<repo id or local folder>" (transformers).
    checkpoint: a local file; None = the official weights (downloaded once into the cache,
      sha256-checked); "random" = random weights.
    device: "auto" (cuda, then mps, then cpu), or a torch device.
    """
    if not isinstance(name, str):
        raise bad_argument("name", f"one of {', '.join(KNOWN_MODELS)}", name)
    target = resolve_device(device)
    if name == "tinysam":
        from samkit.models import tinysam

        return tinysam.load(checkpoint, target)
    if name in ("text_tinysam", "text_tinysam_swap"):
        from samkit.models import text_tinysam

        return text_tinysam.load(name, checkpoint, target).adapter
    if name.startswith("hf:"):
        return _load_transformers(name, checkpoint, target)
    if name not in OFFICIAL_CHECKPOINTS:
        raise bad_argument("name", f"one of {', '.join(KNOWN_MODELS)}", name)
    module = _build_official(name)
    sha = _load_weights(module, name, checkpoint)
    if name in SAM1_BUILDERS:
        from samkit.models.sam1 import SegmentAnythingAdapter

        return SegmentAnythingAdapter(module, name, sha, target)
    from samkit.models.sam2 import Sam2Adapter

    return Sam2Adapter(module, name, sha, target)


def _build_official(name: str) -> torch.nn.Module:
    """The official architecture with random weights (no file is read here)."""
    if name in SAM1_BUILDERS:
        import segment_anything

        return getattr(segment_anything, SAM1_BUILDERS[name])(checkpoint=None)
    from samkit.models.sam2 import build_sam2_model

    return build_sam2_model(name)


def _load_weights(module: torch.nn.Module, name: str, checkpoint) -> str | None:
    """Load the checkpoint into `module`; return its sha256 (None for random weights)."""
    if checkpoint == RANDOM:
        return None
    path = fetch_checkpoint(name) if checkpoint is None else Path(checkpoint).expanduser()
    state = read_state_dict(path, name)
    load_into(module, state, name, path)
    return file_sha256(path)


def _load_transformers(name: str, checkpoint, device: torch.device) -> SamAdapter:
    """`hf:<repo>`: SamModel / Sam2Model and their processor, from the hub cache or a folder."""
    from transformers import AutoConfig, AutoProcessor, Sam2Model, SamModel

    from samkit.checkpoints import cache_dir
    from samkit.models.hf import TransformersAdapter

    repo = str(checkpoint) if checkpoint not in (None, RANDOM) else name[3:]
    if not repo:
        raise bad_argument("name", '"hf:<repo id>", e.g. "hf:facebook/sam-vit-base"', name)
    hub_cache = str(cache_dir() / "huggingface")
    try:
        config = AutoConfig.from_pretrained(repo, cache_dir=hub_cache)
        model_class = {"sam": SamModel, "sam2": Sam2Model}.get(config.model_type)
        if model_class is None:
            raise bad_argument("name", "a transformers repo of model type 'sam' or 'sam2'",
                               f"{repo} of type {config.model_type!r}")
        model = (model_class(config) if checkpoint == RANDOM
                 else model_class.from_pretrained(repo, cache_dir=hub_cache, use_safetensors=True))
        processor = AutoProcessor.from_pretrained(repo, cache_dir=hub_cache)
    except OSError as error:
        raise OSError(f"cannot load {name}: {error}. Offline? Download the repo elsewhere and pass its "
                      f"folder: load_model('hf:{repo}', checkpoint='/path/to/folder')") from None
    # The embedding cache needs to know the weights: a local file's sha256, or the hub commit.
    weights = Path(repo) / "model.safetensors"
    commit = getattr(config, "_commit_hash", None)
    if checkpoint == RANDOM:
        sha = None
    elif weights.is_file():
        sha = file_sha256(weights)
    else:
        sha = f"hf-{commit}" if commit else None
    return TransformersAdapter(model, processor, name, sha, device)
