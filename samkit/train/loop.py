"""The training loop shared by every method: `fit(config)`.

Read it top to bottom: build the method, restore a checkpoint when resuming, then for each
epoch walk a seeded permutation of the training set in optimiser steps, evaluate, record
and checkpoint. Sample order and each sample's random prompts depend only on
(seed, epoch, index), so a resumed run, or a run split over N processes, sees exactly the
batches an uninterrupted single-process run sees.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from samkit.atomic import write_bytes_atomic
from samkit.methods import Method, build_method
from samkit.setup import seed_everything
from samkit.train.config import TrainConfig, load_config
from samkit.train.distributed import Processes, start_processes
from samkit.train.state import capture_rng, load_checkpoint, restore_rng, save_checkpoint

LAST, BEST, HISTORY = "last.safetensors", "best.safetensors", "history.csv"


class _EpochSamples(Dataset):
    """The method's samples for one epoch; sample `index` draws its prompts from rng(seed, epoch, index)."""

    def __init__(self, method: Method, seed: int, epoch: int):
        self.method, self.seed, self.epoch = method, seed, epoch

    def __len__(self) -> int:
        return len(self.method)

    def __getitem__(self, index: int) -> Any:
        return self.method.train_sample(int(index), np.random.default_rng([self.seed, self.epoch, int(index)]))


def trainable_weights(method: Method) -> dict[str, torch.Tensor]:
    """The parameters that train (the only ones a checkpoint stores)."""
    return {name: p for name, p in method.named_parameters() if p.requires_grad}


def _seed_of(*numbers: int) -> int:
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, np.uint64)[0] % 2**63)


def _lr_factor(config: TrainConfig, total_steps: int, steps_per_epoch: int = 1):
    """The learning-rate schedule as a factor of `lr`: linear warm-up, then the chosen decay."""
    period = max(1, config.restart_epochs * steps_per_epoch)  # cosine_restarts: SGDR's T_0, in steps

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        progress = min(1.0, step / max(1, total_steps))
        decay = {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                 "linear": 1.0 - progress, "poly": (1.0 - progress) ** 0.9,  # poly: DeepLab's
                 "step": 0.1 ** sum(progress >= m for m in config.milestones),
                 "cosine_restarts": 0.5 * (1 + math.cos(math.pi * (step % period) / period))}[config.schedule]
        return warm * decay
    return factor


def _optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _step_indices(order: np.ndarray, step: int, config: TrainConfig, processes: Processes) -> list[list[int]]:
    """This process's micro-batches of one optimiser step (global batch = world x accum x micro)."""
    micro = config.batch_size // (processes.world * config.grad_accum)
    start = step * config.batch_size
    return [order[start + (a * processes.world + processes.rank) * micro:][:micro].tolist()
            for a in range(config.grad_accum)]


# What may differ when a run resumes: how it is watched and where it runs, and `epochs` (a finished run
# may be extended, as CPC-SAM's second stage extends its first); everything else is another run.
_RESUMABLE_CHANGES = ("device", "progress", "tensorboard", "num_workers", "checkpoint_every", "epochs")


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint that another config trained (its weights would not be this run's)."""
    normal = lambda config: json.loads(json.dumps({k: v for k, v in config.items() if k not in _RESUMABLE_CHANGES},
                                                  sort_keys=True, default=str))  # noqa: E731
    before, now = normal(saved), normal(current)
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if changed:
        raise ValueError(f"resume: expected the config that trained {path}, got other values for {', '.join(changed)} "
                         f"(start a new run_dir, or resume=False to start over)")


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_bytes_atomic(out / HISTORY, text.getvalue().encode())


def _tensorboard(config: TrainConfig, processes: Processes):
    if not (config.tensorboard and processes.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(config.out / "tensorboard"))


def fit(config: TrainConfig | str | dict, overrides: list[str] | None = None, resume: bool = False) -> pd.DataFrame:
    """Train `config.method`; returns one row per epoch (train loss, evaluation metrics, lr, time).

    `config` is a TrainConfig, a YAML path, a config name in `samkit/configs/` or a dict.
    `resume=True` continues from `<run_dir>/last.safetensors` exactly where it stopped.
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config, overrides)
    processes = start_processes(config.device)
    device = processes.device
    out = config.out
    if config.batch_size % (processes.world * config.grad_accum):
        raise ValueError(f"batch_size: expected a multiple of processes x grad_accum = "
                         f"{processes.world} x {config.grad_accum}, got {config.batch_size}")

    seed_everything(config.seed)  # every process builds the same initial weights
    method = build_method(config.method, config.method_args, device).to(device)
    parameters = list(trainable_weights(method).values())
    if not parameters:
        raise ValueError(f"method {config.method!r}: it has no trainable parameters")
    steps_per_epoch = len(method) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size: expected at most the {len(method)} training samples, got {config.batch_size}")
    optimizer = _optimizer(config, parameters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(config, config.epochs * steps_per_epoch, steps_per_epoch))

    # Where the loop stands; a checkpoint stores exactly this.
    position: dict[str, Any] = {"epoch": 0, "step": 0, "global_step": 0, "sums": {}, "count": 0,
                                "history": [], "best": None, "seconds": 0.0, "config": config.to_dict()}
    last_path = out / LAST
    if resume and last_path.exists():
        checkpoint = load_checkpoint(last_path)
        _copy_weights(method, checkpoint.weights, last_path)
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
        restore_rng(checkpoint.rng)
        position = checkpoint.trainer
        _check_same_run(position.get("config", {}), config.to_dict(), last_path)
        if processes.is_main and position["epoch"] >= config.epochs:
            print(f"{out}: finished ({position['epoch']} epochs); its history is read back, nothing trains")
        elif processes.is_main:
            print(f"resuming {out} at epoch {position['epoch'] + 1}, step {position['step']}/{steps_per_epoch}")
    elif resume and processes.is_main:
        print(f"resume: no checkpoint at {last_path}; starting a new run")

    model: torch.nn.Module = method
    if processes.distributed:
        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=config.find_unused_parameters)
    use_bf16 = device.type == "cuda" and config.precision in ("auto", "bf16")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    writer = _tensorboard(config, processes)

    def save_last() -> None:
        if processes.is_main:
            save_checkpoint(last_path, trainable_weights(method), optimizer, scheduler, capture_rng(), position)

    def evaluate() -> dict[str, float]:
        method.eval()
        with torch.no_grad(), autocast():
            metrics = {k: round(float(v), 6) for k, v in method.evaluate().items()}
        method.train()
        return metrics

    def record(row: dict[str, Any]) -> None:
        position["history"].append(row)
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        _write_history(out, position["history"])
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, row["epoch"])
            writer.flush()

    if processes.is_main:
        print(method.describe())
        if config.eval_at_start and not position["history"]:
            record({"epoch": 0, **evaluate()})
    method.train()
    while position["epoch"] < config.epochs:
        epoch, started = position["epoch"], time.perf_counter()
        method.epoch = epoch
        order = np.random.default_rng([config.seed, epoch]).permutation(len(method))
        steps = range(position["step"], steps_per_epoch)
        batches = [indices for step in steps for indices in _step_indices(order, step, config, processes)]
        loader = iter(DataLoader(_EpochSamples(method, config.seed, epoch), batch_sampler=batches,
                                 collate_fn=method.collate, num_workers=config.num_workers))
        bar = tqdm(steps, desc=f"epoch {epoch + 1}/{config.epochs}", initial=position["step"],
                   total=steps_per_epoch, disable=not (config.progress and processes.is_main), leave=False)
        for step in bar:
            method.global_step = position["global_step"]
            for micro in range(config.grad_accum):
                # Seeded per micro-batch, so dropout draws do not depend on how the run was split.
                torch.manual_seed(_seed_of(config.seed, epoch, step, micro * processes.world + processes.rank))
                last_micro = micro == config.grad_accum - 1
                sync = nullcontext() if last_micro or not processes.distributed else model.no_sync()
                with sync:
                    with autocast():
                        loss, logs = model(next(loader))
                    (loss / config.grad_accum).backward()
                for key, value in {"loss": float(loss.detach()), **logs}.items():
                    position["sums"][key] = position["sums"].get(key, 0.0) + float(value)
                position["count"] += 1
            method.before_optimizer_step()
            if config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], config.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            position["step"], position["global_step"] = step + 1, position["global_step"] + 1
            bar.set_postfix(loss=f"{position['sums']['loss'] / position['count']:.4f}")
            if config.checkpoint_every and position["global_step"] % config.checkpoint_every == 0 \
                    and step + 1 < steps_per_epoch:
                position["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                save_last()
        bar.close()

        # End of epoch: average the logs over processes, evaluate, record, checkpoint.
        keys = sorted(position["sums"])
        means = processes.mean([position["sums"][k] / max(1, position["count"]) for k in keys])
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": round(v, 6) for k, v in zip(keys, means)},
                               "lr": scheduler.get_last_lr()[0]}
        row["seconds"] = round(position["seconds"] + time.perf_counter() - started, 2)  # training only
        evaluate_now = config.eval_every and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs)
        if evaluate_now and processes.is_main:
            row.update(evaluate())
        position.update(epoch=epoch + 1, step=0, sums={}, count=0, seconds=0.0)
        if processes.is_main:
            record(row)
            metric = row.get(config.best_metric) if config.best_metric else None
            if metric is not None:
                better = position["best"] is None or (
                    metric > position["best"] if config.best_mode == "max" else metric < position["best"])
                if better:
                    position["best"] = metric
                    save_checkpoint(out / BEST, trainable_weights(method),
                                    trainer={"epoch": epoch + 1, config.best_metric: metric})
        save_last()
        processes.barrier()
    if writer is not None:
        writer.close()
    return pd.DataFrame(position["history"])


def _copy_weights(method: Method, weights: dict[str, torch.Tensor], source: str | Path) -> None:
    trainable = trainable_weights(method)
    differing = set(trainable) ^ set(weights)
    if differing:
        raise ValueError(f"checkpoint {source} does not fit {type(method).__name__}: "
                         f"first differing weight {sorted(differing)[0]!r}")
    with torch.no_grad():
        for name, value in trainable.items():
            value.copy_(weights[name])


def load_weights(method: Method, path: str | Path) -> Method:
    """Put the weights of a `best` or `last` checkpoint into a freshly built method."""
    _copy_weights(method, load_checkpoint(path).weights, path)
    return method
