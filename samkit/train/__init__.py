"""One trainer for every method: configs, progress, checkpoints, exact resume, DDP with torchrun.

    from samkit.train import fit
    history = fit("finetune_class")            # a config in samkit/configs/, a YAML path or a dict
    method = load_run("runs/finetune")         # the trained method back, from its run folder

    python -m samkit.train samkit/configs/finetune_class.yaml epochs=3 method_args.lora_rank=8
    python -m samkit.train samkit/configs/finetune_class.yaml --resume
    torchrun --nproc_per_node 2 -m samkit.train samkit/configs/finetune_class.yaml
"""

from samkit.methods import METHODS, Method, build_method, register_method  # re-exported: what the trainer builds
from samkit.train.config import TrainConfig, load_config
from samkit.train.loop import fit, load_weights, trainable_weights
from samkit.train.runs import load_run, run_config

__all__ = ["METHODS", "Method", "TrainConfig", "build_method", "fit", "load_config", "load_run", "load_weights",
           "register_method", "run_config", "trainable_weights"]
