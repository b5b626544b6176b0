"""One trainer for every method: configs, progress, checkpoints, exact resume, DDP with torchrun.

    from samkit.train import fit
    history = fit("finetune_class")            # a config in samkit/configs/, a YAML path or a dict

    python -m samkit.train samkit/configs/finetune_class.yaml epochs=3 method_args.lora_rank=8
    python -m samkit.train samkit/configs/finetune_class.yaml --resume
    torchrun --nproc_per_node 2 -m samkit.train samkit/configs/finetune_class.yaml
"""

from samkit.train.config import TrainConfig, load_config
from samkit.train.loop import fit, load_weights, trainable_weights
from samkit.train.method import METHODS, Method, build_method, register_method

__all__ = ["METHODS", "Method", "TrainConfig", "build_method", "fit", "load_config", "load_weights",
           "register_method", "trainable_weights"]
