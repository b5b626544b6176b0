"""TinySAM: the embedded default model, its checkpoint, its quality bar, and `python -m samkit.models.tinysam`.

How it is trained is a method like the others (`samkit.methods.tinysam_pretrain`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from samkit.checkpoints import CheckpointError, file_sha256, load_into, read_state_dict
from samkit.datasets import ShapeScenes
from samkit.metrics import iou as mask_iou
from samkit.models.base import SamAdapter
from samkit.models.sam1 import SegmentAnythingAdapter
from samkit.models.sam2 import Sam2Adapter
from samkit.models.tinysam2_arch import build_tinysam2
from samkit.models.tinysam_arch import build_tinysam
from samkit.prompts import center_point, tight_box

# The shipped weights are package data: `samkit/weights/` is the repository's `data/checkpoints/`
# (a symbolic link in the source tree, copied into the wheel by `pip install .`), so the same
# lookup works in a checkout, an editable install and an installed wheel.
CHECKPOINT = Path(str(resources.files("samkit") / "weights" / "tinysam.safetensors"))
CHECKPOINT_SHA = CHECKPOINT.with_name("tinysam.safetensors.sha256")


# TinySAM's architectures: "vit" is v1 (segment_anything's Sam, a plain 16 px-patch ViT), the one
# the shipped checkpoint has; "hiera" and "conv" are v2 candidates (sam2's SAM2Base with a
# hierarchical trunk and high-resolution decoder skips, data/README.md). "random" weights default
# to the shipped architecture, so they are what `load_model("tinysam")` returns, untrained.
ARCHITECTURES = ("vit", "hiera", "conv")
DEFAULT_ARCHITECTURE = "vit"


def build(architecture: str, weights: dict[str, torch.Tensor] | None, sha256: str | None, device: torch.device,
          source: str | os.PathLike = "tinysam") -> SamAdapter:
    """TinySAM of `architecture` behind the seam, with `weights` loaded (None: random)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    module = build_tinysam() if architecture == "vit" else build_tinysam2(architecture)
    if weights is not None:
        load_into(module, weights, "tinysam", source)
    adapter_class = SegmentAnythingAdapter if architecture == "vit" else Sam2Adapter
    adapter = adapter_class(module, "tinysam", sha256, device)
    adapter.architecture = architecture  # which TinySAM, for a reader of the adapter
    return adapter


def architecture_of(weights: dict[str, torch.Tensor]) -> str:
    """Which TinySAM a state dict belongs to, read off its image encoder's first layer."""
    if any(key.startswith("image_encoder.trunk.stem.") for key in weights):
        return "conv"
    if any(key.startswith("image_encoder.trunk.") for key in weights):
        return "hiera"
    return "vit"


def load(checkpoint: str | os.PathLike | None, device: torch.device, architecture: str | None = None) -> SamAdapter:
    """TinySAM with the shipped weights (sha256-checked), another file, or "random" weights
    (of `architecture`, default DEFAULT_ARCHITECTURE; a file says its own)."""
    if checkpoint == "random":
        return build(architecture or DEFAULT_ARCHITECTURE, None, None, device)
    path = Path(checkpoint) if checkpoint is not None else CHECKPOINT
    if checkpoint is None:
        if not CHECKPOINT.exists():
            raise CheckpointError(f"TinySAM's checkpoint is missing at {CHECKPOINT}; it ships with samkit "
                                  "(data/checkpoints/ in the repository: git checkout data/), or rebuild it: "
                                  "python -m samkit.models.tinysam train")
        expected = CHECKPOINT_SHA.read_text().split()[0]
        actual = file_sha256(CHECKPOINT)
        if actual != expected:
            raise CheckpointError(f"{CHECKPOINT} has sha256 {actual}, but {CHECKPOINT_SHA.name} says {expected}: "
                                  "the file is corrupt or was changed (git checkout data/ restores it)")
    state = read_state_dict(path, "tinysam")
    found = architecture_of(state)
    if architecture is not None and architecture != found:
        raise CheckpointError(f"{path} holds TinySAM {found!r}, but architecture={architecture!r} was asked for")
    return build(found, state, file_sha256(path), device, path)


def save(model: SamAdapter, path: str | os.PathLike = CHECKPOINT) -> str:
    """Write TinySAM's weights as safetensors (atomically) and its sha256 beside; return the sha256."""
    from safetensors.torch import save_file

    from samkit.atomic import atomic_path, write_bytes_atomic

    path = Path(path)
    state = {key: value.detach().cpu().contiguous() for key, value in model.module.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata={"model": "tinysam", "architecture": architecture_of(state),
                                                    "format": f"{type(model.module).__name__} state_dict"})
    digest = file_sha256(path)
    write_bytes_atomic(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n".encode())
    return digest


@torch.no_grad()
def evaluate(model: SamAdapter, n: int = 300, seed: int = 0, batch: int = 20, split: str = "test",
             classes: Sequence[str] = ("base", "novel")) -> dict:
    """The quality bar: box-prompt mIoU and best-of-three centre-click mIoU (and the mIoU of the
    candidate the IoU head picks) on `n` held-out scenes of each class set; instances' IoU averaged
    over all instances."""
    model.module.eval()
    results = {}
    for class_set in classes:
        data = ShapeScenes(split, class_set, n=n, seed=seed)
        box_ious, click_ious, click_pick_ious = [], [], []
        for start in range(0, n, batch):
            scenes = [data[i] for i in range(start, min(n, start + batch))]
            embedding = model.embed([s.image for s in scenes])
            rows = [(i, m) for i, s in enumerate(scenes) for m in s.instance_masks]
            gts = np.stack([m for _, m in rows])
            per_target = embedding.select([i for i, _ in rows])
            size = gts.shape[-2:]
            sparse, dense = model.prompt_tokens(boxes=np.stack([tight_box(m) for _, m in rows]))
            low_res, _ = model.decode(per_target, sparse, dense, multimask=False)
            box_masks = F.interpolate(low_res, size=size, mode="bilinear") > 0
            box_ious.extend(mask_iou(box_masks[:, 0].numpy(), gts))
            clicks = np.stack([center_point(m) for _, m in rows])
            sparse, dense = model.prompt_tokens(points=clicks, labels=np.ones((len(rows), 1)))
            low_res, scores = model.decode(per_target, sparse, dense, multimask=True)
            click_masks = (F.interpolate(low_res, size=size, mode="bilinear") > 0).numpy()
            candidate_ious = np.stack([mask_iou(click_masks[:, k], gts) for k in range(3)], axis=1)
            click_ious.extend(candidate_ious.max(axis=1))
            click_pick_ious.extend(candidate_ious[np.arange(len(rows)), scores.argmax(1).numpy()])
        results[f"box_miou_{class_set}"] = round(float(np.mean(box_ious)), 4)
        results[f"click_miou_{class_set}"] = round(float(np.mean(click_ious)), 4)
        results[f"click_pick_miou_{class_set}"] = round(float(np.mean(click_pick_ious)), 4)
        results[f"instances_{class_set}"] = len(box_ious)
    return results


def main(argv: list[str] | None = None) -> None:
    """`python -m samkit.models.tinysam train [key=value ...] [--resume] [--out PATH]`, or
    `... evaluate [--checkpoint PATH] [--eval-scenes N]`.

    train runs the `tinysam_pretrain` config through samkit's trainer (run folder
    runs/tinysam_pretrain; `--resume` continues it exactly), then writes the weights as safetensors
    with their sha256 and a report (config, minutes, evaluation, learning curve) beside them.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m samkit.models.tinysam", description=main.__doc__)
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="train: config overrides, e.g. epochs=2 method_args.scenes_per_epoch=40 lr=1e-3")
    parser.add_argument("--config", default="tinysam_pretrain", help="a training config (name or YAML path)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--eval-scenes", type=int, default=300)
    args = parser.parse_args(argv)

    device = torch.device("cpu")  # the recipe is defined on the CPU, so it reproduces anywhere
    if args.command == "evaluate":
        print(json.dumps(evaluate(load(args.checkpoint, device), n=args.eval_scenes), indent=2))
        return
    # A command-line entry point, not library code: the trainer sits above the models, so it is
    # imported here, when the command runs, and importing samkit.models never loads it.
    from samkit.atomic import write_bytes_atomic
    from samkit.train import fit, load_config, load_run

    config = load_config(args.config, ["device=cpu", *args.overrides])
    history = fit(config, resume=args.resume)
    method = load_run(config.out, device=device)
    digest = save(method.adapter, args.out)
    scores = evaluate(method.adapter, n=args.eval_scenes)
    minutes = round(float(history["seconds"].sum()) / 60, 1)
    report = {"config": config.to_dict(), "train_minutes": minutes, "sha256": digest,
              "evaluation": scores, "history": history.to_dict(orient="records")}
    write_bytes_atomic(args.out.with_name(args.out.stem + "_report.json"), json.dumps(report, indent=1).encode())
    print(json.dumps({"train_minutes": minutes, "sha256": digest, **scores}, indent=2))


if __name__ == "__main__":
    main()
