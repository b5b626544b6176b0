"""Checkpoints as single safetensors files: weights, optimiser, scheduler, RNG and loop position.

One file per checkpoint, written atomically, so a run killed at any moment leaves either
the previous checkpoint or the new one, never a mix. Tensors go in the tensor section; the
small non-tensor parts (optimiser hyper-parameters, scheduler counters, RNG positions, the
loop position and history) go in the JSON metadata. Nothing is pickled, so loading a
checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from samkit.atomic import atomic_path

WEIGHTS, OPTIM, RNG = "weights.", "optim.", "rng."


@dataclass
class Checkpoint:
    """What a checkpoint file holds, split back into its parts."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    trainer: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """The state of every random generator the loop may touch (Python, NumPy, torch, CUDA)."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].copy(), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_json(value: Any) -> Any:
    """Tuples become lists; tensors of one number become numbers (scheduler counters)."""
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    return value


def save_checkpoint(path: str | os.PathLike, weights: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    rng: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None) -> None:
    """Write one checkpoint file atomically."""
    tensors = {WEIGHTS + name: value.detach().cpu().contiguous().clone() for name, value in weights.items()}
    meta: dict[str, str] = {"format": "samkit-train-1", "trainer": json.dumps(trainer or {})}
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entries in state["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"{OPTIM}{index}.{key}"] = value.detach().cpu().contiguous().clone()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        meta["optim_groups"] = json.dumps(_to_json(state["param_groups"]))
        meta["optim_scalars"] = json.dumps(scalars)
    if scheduler is not None:
        meta["scheduler"] = json.dumps(_to_json(scheduler.state_dict()))
    if rng is not None:
        tensors[RNG + "torch"] = rng["torch"]
        for device, cuda_state in enumerate(rng["cuda"]):
            tensors[f"{RNG}cuda.{device}"] = cuda_state
        kind, keys, *position = rng["numpy"]
        tensors[RNG + "numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
        meta["rng"] = json.dumps({"python": _to_json(rng["python"]), "numpy_kind": kind,
                                  "numpy_position": _to_json(position), "cuda_devices": len(rng["cuda"])})
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=meta)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; a damaged file is a clear error."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"checkpoint {path}: cannot be read as safetensors ({error})") from None
    if meta.get("format") != "samkit-train-1":
        raise ValueError(f"checkpoint {path}: not a samkit training checkpoint (format {meta.get('format')!r})")
    weights = {key[len(WEIGHTS):]: value for key, value in tensors.items() if key.startswith(WEIGHTS)}
    checkpoint = Checkpoint(weights=weights, trainer=json.loads(meta["trainer"]))
    if "optim_groups" in meta:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIM):
                index, name = key[len(OPTIM):].split(".", 1)
                state.setdefault(int(index), {})[name] = value
        for index, entries in json.loads(meta["optim_scalars"]).items():
            state.setdefault(int(index), {}).update(entries)
        groups = json.loads(meta["optim_groups"])
        for group in groups:  # JSON turned tuples into lists; Adam wants betas as a tuple
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        checkpoint.optimizer = {"state": state, "param_groups": groups}
    if "scheduler" in meta:
        checkpoint.scheduler = json.loads(meta["scheduler"])
    if "rng" in meta:
        info = json.loads(meta["rng"])
        version, internal, gauss = info["python"]
        checkpoint.rng = {
            "python": (version, tuple(internal), gauss),
            "numpy": (info["numpy_kind"], tensors[RNG + "numpy_keys"].numpy().astype(np.uint32),
                      *info["numpy_position"]),
            "torch": tensors[RNG + "torch"],
            "cuda": [tensors[f"{RNG}cuda.{d}"] for d in range(info["cuda_devices"])],
        }
    return checkpoint
