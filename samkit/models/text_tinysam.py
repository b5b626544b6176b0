"""The text-conditioned TinySAM: segment a class by its name, the kit's small analogue of SEEM.

TinySAM's image and prompt encoders, unchanged; a class name's frozen MiniLM vector through a
linear projection becomes one prompt token, which joins the default spatial prompts (a grid of
clicks) in TinySAM's mask decoder, re-trained with the projection so that the decoder's single
mask for that prompt set is the class (`samkit.methods.text_tinysam_pretrain`). SSPrompt's
"default prompts" are exactly these: the name's token and the grid of clicks.

Two checkpoints ship, from one recipe that differs only in which four names were made rare in
pre-training (SSPrompt Fig. 3b's premise, built in on purpose): `text_tinysam` (rock, sponge,
starfish, fish rare) and `text_tinysam_swap` (water, jellyfish, shell, crab rare, each about the
pixel share of its partner), the swap control. Both are safetensors files next to TinySAM's, the
decoder in float16, with their recipe as metadata.

    python -m samkit.models.text_tinysam train [--swap] [--resume]   # pre-train, then write the checkpoint
    python -m samkit.models.text_tinysam evaluate [--swap]           # semantic mIoU on held-out plain scenes
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from samkit.atomic import atomic_path
from samkit.checkpoints import CheckpointError, file_sha256
from samkit.device import resolve_device
from samkit.errors import bad_argument
from samkit.models.base import ImageEmbedding, SamAdapter
from samkit.models.text_prompts import DefaultClicks, TextPromptEncoder, class_mask_logits, point_grid

WEIGHTS = Path(str(resources.files("samkit") / "weights"))
CHECKPOINTS = {"text_tinysam": WEIGHTS / "text_tinysam.safetensors",
               "text_tinysam_swap": WEIGHTS / "text_tinysam_swap.safetensors"}
CONFIG = "text_tinysam_pretrain"
SWAP_RARE_CLASSES = ("water", "jellyfish", "shell", "crab")  # the control's rare names (see the config)


class TextTinySam:
    """A text-conditioned TinySAM: `adapter` (the seam, with the re-trained decoder; its
    `text_prompts` is `text`), the names it was trained on, the rare ones, and its click grid."""

    def __init__(self, adapter: SamAdapter, text: TextPromptEncoder, class_names: Sequence[str],
                 rare_classes: Sequence[str], spatial_points: int):
        self.adapter, self.text = adapter, text
        self.class_names, self.rare_classes = tuple(class_names), tuple(rare_classes)
        self.spatial_points = int(spatial_points)
        adapter.text_prompts = text  # what SSPrompt reads its default semantic prompts from
        adapter.spatial_points = self.spatial_points
        adapter.rare_classes = self.rare_classes  # the names made rare in pre-training (Fig. 3b's premise)
        adapter.class_names = self.class_names
        self.default_clicks = DefaultClicks(adapter, point_grid(self.spatial_points))

    def class_tokens(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, 256) prompt tokens of the names (any text MiniLM reads; the trained names work best)."""
        names = check_class_names(class_names)
        with torch.no_grad():
            return self.text(names)

    def segment(self, image: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """(C, H, W) float32 mask logits, one map per name, at the image's size."""
        return self.segment_tokens(image, self.class_tokens(class_names))

    def segment_tokens(self, image: np.ndarray, tokens: torch.Tensor) -> np.ndarray:
        """(C, H, W) mask logits for (C, 256) semantic tokens (a name's, or any other) with the default clicks."""
        return self.segment_embedding(self.adapter.embed([image]), tokens)

    @torch.no_grad()
    def segment_embedding(self, embedding: ImageEmbedding, tokens: torch.Tensor) -> np.ndarray:
        """`segment_tokens` for an image embedded already (one image: a Predictor's `embedding`)."""
        if len(embedding.input_sizes) != 1:
            raise bad_argument("embedding", "the embedding of one image", len(embedding.input_sizes))
        spatial = self.default_clicks(embedding.input_sizes[0])[None]
        logits = class_mask_logits(self.adapter, embedding, tokens, spatial)
        full = self.adapter.postprocess_masks(logits, embedding.input_sizes[0], embedding.original_sizes[0])
        return full[0].float().cpu().numpy()

    def name_mask(self, embedding: ImageEmbedding, name: str) -> np.ndarray:
        """(H, W) bool: where `name` outscores every trained name. A class's logits mean something only
        against the others (pre-training's cross-entropy fixes them up to a shift per pixel), so one
        name's map is not thresholded at 0 alone."""
        names = check_class_names([name]) + [c for c in self.class_names if c != name]
        return self.segment_embedding(embedding, self.class_tokens(names)).argmax(0) == 0

    def semantic(self, image: np.ndarray, class_names: Sequence[str] | None = None) -> np.ndarray:
        """(H, W) int64 map: the index of the best-scoring name (all trained names by default)."""
        return self.segment(image, class_names or self.class_names).argmax(0)


def from_adapter(model: SamAdapter, argument: str = "model") -> TextTinySam:
    """The TextTinySam around the adapter `load_model("text_tinysam")` returns (`argument`: the
    caller's name for `model`, for the error)."""
    text = getattr(model, "text_prompts", None)
    if not isinstance(model, SamAdapter) or text is None:
        raise bad_argument(argument, "a model that segments by class name, e.g. load_model('text_tinysam')", model)
    return TextTinySam(model, text, getattr(model, "class_names", ()), getattr(model, "rare_classes", ()),
                       getattr(model, "spatial_points", 16))


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """The names as a list, or a ValueError that says which one is not a usable name."""
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names:
        raise bad_argument("class_names", "a non-empty list of class names", class_names)
    for i, name in enumerate(class_names):
        if not isinstance(name, str) or not name.strip():
            raise bad_argument(f"class_names[{i}]", "a non-empty string, e.g. 'crab'", name)
    return list(class_names)


def save(method, path: str | os.PathLike) -> str:
    """Write a trained `TextTinySamPretrain`'s decoder (float16) and projection atomically; return the sha256."""
    decoder = {f"mask_decoder.{k}": v.detach().cpu().half().contiguous()
               for k, v in method.adapter.mask_decoder.state_dict().items()}
    projection = {f"projection.{k}": v.detach().cpu().contiguous()
                  for k, v in method.text.projection.state_dict().items()}
    metadata = {"class_names": json.dumps(list(method.class_names)),
                "rare_classes": json.dumps([method.class_names[c] for c in method.rare_ids]),
                "rare_rate": str(method.rare_rate), "spatial_points": str(len(method.grid)),
                "text_encoder": method.text.text.name, "tinysam_sha256": method.adapter.checkpoint_sha256 or ""}
    path = Path(path)
    with atomic_path(path) as temp:
        save_file({**decoder, **projection}, str(temp), metadata=metadata)
    sha = file_sha256(path)
    with atomic_path(path.with_name(path.name + ".sha256")) as temp:
        Path(temp).write_text(f"{sha}  {path.name}\n")
    return sha


def load(name: str = "text_tinysam", checkpoint: str | os.PathLike | None = None,
         device: str | torch.device = "auto") -> TextTinySam:
    """The shipped text-conditioned TinySAM `name` (or `checkpoint`, a file `save` wrote)."""
    from samkit.models import tinysam
    from samkit.models.sam1 import SegmentAnythingAdapter

    if name not in CHECKPOINTS:
        raise bad_argument("name", f"one of {sorted(CHECKPOINTS)}", name)
    target = resolve_device(device)
    path = Path(checkpoint).expanduser() if checkpoint is not None else CHECKPOINTS[name]
    if not path.is_file():
        raise CheckpointError(f"{path}: no text-conditioned TinySAM checkpoint here; make it with "
                              f"`python -m samkit.models.text_tinysam train{' --swap' if 'swap' in name else ''}`")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    base = tinysam.load(None, target)
    if metadata.get("tinysam_sha256") and metadata["tinysam_sha256"] != base.checkpoint_sha256:
        raise CheckpointError(f"{path}: its decoder was trained on the embeddings of TinySAM "
                              f"{metadata['tinysam_sha256'][:12]}, not the shipped {str(base.checkpoint_sha256)[:12]}; "
                              "retrain it (`python -m samkit.models.text_tinysam train`)")
    decoder = {k[len("mask_decoder."):]: v.float() for k, v in tensors.items() if k.startswith("mask_decoder.")}
    base.mask_decoder.load_state_dict(decoder)
    adapter = SegmentAnythingAdapter(base.module, name, file_sha256(path), target)
    adapter.architecture = getattr(base, "architecture", "vit")
    text = TextPromptEncoder(metadata.get("text_encoder", "minilm"), adapter.token_dim, target)
    text.projection.load_state_dict({k[len("projection."):]: v.float() for k, v in tensors.items()
                                     if k.startswith("projection.")})
    text.requires_grad_(False)
    return TextTinySam(adapter, text, json.loads(metadata.get("class_names", "[]")),
                       json.loads(metadata.get("rare_classes", "[]")), int(metadata.get("spatial_points", 16)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m samkit.models.text_tinysam", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("--swap", action="store_true", help="the control: the other four names rare")
    parser.add_argument("--resume", action="store_true", help="continue a stopped run from its last state")
    args = parser.parse_args(argv)
    from samkit.train import fit, load_config, load_run

    name = "text_tinysam_swap" if args.swap else "text_tinysam"
    overrides = [f"run_dir=runs/{name}_pretrain"]
    if args.swap:
        overrides.append(f"method_args.rare_classes=[{', '.join(SWAP_RARE_CLASSES)}]")
    config = load_config(CONFIG, overrides)
    if args.command == "train":
        fit(config, resume=args.resume)
        sha = save(load_run(config.out, device="cpu"), CHECKPOINTS[name])
        print(f"wrote {CHECKPOINTS[name]} (sha256 {sha})")
    metrics = evaluate(load(name, device="cpu"))
    print(json.dumps(metrics, indent=2))


def evaluate(model: TextTinySam, n: int = 100, seed: int = 2, style: str | None = None) -> dict[str, float]:
    """Semantic mIoU (and per-class IoU) of the model's default prompts on `n` held-out test scenes."""
    from samkit.datasets.semantic import semantic_scores
    from samkit.datasets.specs import semantic_data

    data = semantic_data({"kind": "shapescenes", "split": "test", "classes": "all", "n": n, "seed": seed,
                          "style": style})
    names = data.class_names
    metrics, per_class = semantic_scores(lambda images: [model.semantic(image, names) for image in images], data)
    return {**metrics, **{f"iou_{k}": v for k, v in per_class.items()}}


if __name__ == "__main__":
    main()
