"""`python -m samkit.train CONFIG [key=value ...] [--resume]` (also under `torchrun`)."""

from __future__ import annotations

import argparse

from samkit.train.config import load_config
from samkit.train.distributed import stop_processes
from samkit.train.loop import fit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m samkit.train", description=__doc__)
    parser.add_argument("config", help="a YAML file, or the name of one in samkit/configs/ (e.g. finetune_class)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 method_args.lora_rank=8")
    parser.add_argument("--resume", action="store_true", help="continue from <run_dir>/last.safetensors")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    try:
        fit(config, resume=args.resume)
    finally:
        stop_processes()


if __name__ == "__main__":
    main()
