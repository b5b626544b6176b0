"""One module per method; importing this package registers them with the trainer."""

from samkit.methods import finetune  # noqa: F401

__all__ = ["finetune"]
