"""Training configs: one dataclass, YAML files under `samkit/configs/`, `key=value` overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from samkit.errors import bad_argument

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SCHEDULES = ("constant", "cosine", "linear", "poly", "step", "cosine_restarts")


@dataclass
class TrainConfig:
    """Everything the trainer needs; `method` and `method_args` say what is trained.

    `batch_size` is the global batch of one optimiser step: it is split over the processes
    of a torchrun job and over `grad_accum` micro-batches, so a run on 1 process and on N
    processes with the same `batch_size` computes the same step.
    """

    method: str
    method_args: dict[str, Any] = field(default_factory=dict)
    run_dir: str = "runs/{method}"
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    # constant | cosine | linear | poly (power 0.9) | step (x0.1 at each milestone)
    # | cosine_restarts (SGDR: cosine annealing restarted every `restart_epochs`, as ProSAM trains)
    schedule: str = "constant"
    milestones: tuple[float, ...] = ()  # step schedule: fractions of the run, e.g. [0.89, 0.96] (OpenWorldSAM)
    restart_epochs: int = 0  # cosine_restarts: the period T_0 in epochs (ProSAM: 15)
    warmup_steps: int = 0
    clip_grad_norm: float | None = 1.0
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
    device: str = "auto"  # auto = cuda, then mps, then cpu
    seed: int = 0
    checkpoint_every: int = 0  # optimiser steps between `last` checkpoints; 0 = at epoch ends only
    eval_every: int = 1  # epochs between evaluations; 0 = never
    eval_at_start: bool = False  # also evaluate the untrained model (history row "epoch 0")
    best_metric: str | None = None  # an evaluation key; the `best` checkpoint maximises it
    best_mode: str = "max"  # max | min
    num_workers: int = 0  # DataLoader workers that prepare samples
    find_unused_parameters: bool = False  # DDP: set for methods that skip parameters in a step
    tensorboard: bool = True  # write TensorBoard events too, when tensorboard is installed
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # YAML gives lists
        self.milestones = tuple(float(m) for m in self.milestones)
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "grad_accum": self.grad_accum >= 1,
            "optimizer": self.optimizer in ("adam", "adamw", "sgd"),
            "schedule": self.schedule in SCHEDULES,
            "milestones": all(0 < m < 1 for m in self.milestones),
            "restart_epochs": self.restart_epochs >= (1 if self.schedule == "cosine_restarts" else 0),
            "precision": self.precision in ("auto", "bf16", "fp32"),
            "best_mode": self.best_mode in ("max", "min"), "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0, "checkpoint_every": self.checkpoint_every >= 0,
            "eval_every": self.eval_every >= 0, "num_workers": self.num_workers >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                expected = {
                    "optimizer": "adam, adamw or sgd", "schedule": ", ".join(SCHEDULES),
                    "milestones": "fractions of the run in (0, 1)",
                    "precision": "auto, bf16 or fp32", "best_mode": "max or min", "lr": "a positive number",
                }.get(name, "an int >= 1" if name in ("epochs", "batch_size", "grad_accum", "restart_epochs")
                      else "a number >= 0")
                raise bad_argument(name, expected, getattr(self, name))

    @property
    def out(self) -> Path:
        """The run folder (`run_dir` with `{method}` filled in)."""
        return Path(os.path.expanduser(self.run_dir.format(method=self.method)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(text: str) -> Any:
    """`key=value` values are YAML scalars: 3, 1e-3, true, null, [0.9, 0.99], ocean."""
    return yaml.safe_load(text)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides; dotted keys reach into nested maps (`method_args.lora_rank=8`)."""
    for override in overrides:
        if "=" not in override:
            raise bad_argument("override", "key=value (e.g. lr=1e-3 or method_args.lora_rank=8)", override)
        key, text = override.split("=", 1)
        *parents, leaf = key.strip().split(".")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise bad_argument("override", f"{parent!r} to be a mapping", override)
        target[leaf] = _parse_value(text)
    return values


def load_config(source: str | os.PathLike | dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a YAML file (a path, or a name in `samkit/configs/`) or a dict."""
    if isinstance(source, dict):
        values = dict(source)
    else:
        path = Path(source)
        if not path.exists() and (CONFIG_DIR / f"{source}.yaml").exists():
            path = CONFIG_DIR / f"{source}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise bad_argument("config", f"a YAML file or one of {known}", str(source))
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise bad_argument("config", "a YAML mapping", values)
    values = apply_overrides(values, list(overrides or []))
    known_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known_fields)
    if unknown:
        raise bad_argument("config", f"keys among {sorted(known_fields)}", f"unknown keys {unknown}")
    if "method" not in values:
        raise bad_argument("config", "a `method` key naming the method to train", sorted(values))
    return TrainConfig(**values)
