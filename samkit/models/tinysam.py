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


def save(model: SegmentAnythingAdapter, path: str | os.PathLike = CHECKPOINT) -> str:
    """Write TinySAM's weights as safetensors (atomically) and its sha256 beside; return the sha256."""
    from safetensors.torch import save_file

    from samkit.atomic import atomic_path, write_bytes_atomic

    path = Path(path)
    state = {key: value.detach().cpu().contiguous() for key, value in model.sam.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata={"model": "tinysam", "format": "segment_anything.Sam state_dict"})
    digest = file_sha256(path)
    write_bytes_atomic(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n".encode())
    return digest


def main(argv: list[str] | None = None) -> None:
    """`python -m samkit.models.tinysam train [--steps N] [--out PATH]` or `... evaluate [--checkpoint PATH]`."""
    import argparse
    import json
    import time

    from samkit.models.tinysam_train import PretrainConfig, evaluate, pretrain

    parser = argparse.ArgumentParser(prog="python -m samkit.models.tinysam", description=main.__doc__)
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--seed", type=int, default=PretrainConfig.seed)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--eval-scenes", type=int, default=300)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override PretrainConfig fields, e.g. --set lr=1e-3 scenes_per_step=4")
    args = parser.parse_args(argv)

    device = torch.device("cpu")  # the recipe is defined on the CPU, so it reproduces anywhere
    if args.command == "evaluate":
        print(json.dumps(evaluate(load(args.checkpoint, device), n=args.eval_scenes), indent=2))
        return
    torch.manual_seed(args.seed)
    model = load("random", device)
    overrides = dict(item.split("=", 1) for item in args.set)
    config = PretrainConfig(steps=args.steps, seed=args.seed)
    for key, value in overrides.items():
        setattr(config, key, type(getattr(config, key))(value))
    started = time.time()
    history = pretrain(model, config)
    minutes = (time.time() - started) / 60
    digest = save(model, args.out)
    scores = evaluate(model, n=args.eval_scenes)
    report = {"config": config.__dict__, "train_minutes": round(minutes, 1), "sha256": digest,
              "evaluation": scores, "history": history}
    from samkit.atomic import write_bytes_atomic

    write_bytes_atomic(args.out.with_name(args.out.stem + "_report.json"), json.dumps(report, indent=1).encode())
    print(json.dumps({"train_minutes": round(minutes, 1), "sha256": digest, **scores}, indent=2))


if __name__ == "__main__":
    main()
