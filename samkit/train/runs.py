"""A finished (or interrupted) run folder, back as a trained method: `load_run(run_dir)`.

The trainer saves its config inside `last.safetensors`, so a run folder is enough to rebuild
the method (frozen parts from the config, trained weights from the checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from samkit.device import resolve_device
from samkit.errors import bad_argument
from samkit.methods import Method, build_method
from samkit.setup import seed_everything
from samkit.train.config import TrainConfig
from samkit.train.loop import LAST, load_weights
from samkit.train.state import capture_rng, load_checkpoint, restore_rng


def run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The config a run folder was trained with (read from its `last` checkpoint)."""
    path = Path(run_dir) / LAST
    if not path.is_file():
        raise bad_argument("run_dir", f"a run folder with {LAST} (from samkit.train.fit)", str(run_dir))
    saved = load_checkpoint(path).trainer.get("config")
    if not isinstance(saved, dict):
        raise bad_argument("run_dir", f"a run whose {LAST} holds its config", str(path))
    return TrainConfig(**saved)


def load_run(run_dir: str | os.PathLike, checkpoint: str = "last",
             device: str | torch.device | None = None) -> Method:
    """The method trained in `run_dir`, with the weights of its `checkpoint` ("last", "best" or a
    file name in the folder), in eval mode. `device` defaults to the run's own setting."""
    config = run_config(run_dir)
    name = checkpoint if checkpoint.endswith(".safetensors") else f"{checkpoint}.safetensors"
    path = Path(run_dir) / name
    if not path.is_file():
        raise bad_argument("checkpoint", f'"last", "best" or a checkpoint file in {run_dir}', checkpoint)
    # Seeded as `fit` builds it: a checkpoint holds the trainable parameters, not the buffers a method
    # draws at random when it starts from scratch (TinySAM's random positional-encoding matrix).
    # The caller's generators are left as they were.
    caller_rng = capture_rng()
    seed_everything(config.seed)
    try:
        method = build_method(config.method, config.method_args, resolve_device(device or config.device))
    finally:
        restore_rng(caller_rng)
    return load_weights(method, path).eval()


__all__ = ["load_run", "run_config"]
