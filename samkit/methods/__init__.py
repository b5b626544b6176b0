"""One module per method; importing this package registers them with the trainer."""

from samkit.methods import finetune  # noqa: F401
from samkit.methods import box_generator  # noqa: F401
from samkit.methods import cpc  # noqa: F401
from samkit.methods import prosam  # noqa: F401
from samkit.methods import ssprompt  # noqa: F401
from samkit.methods import openworld  # noqa: F401

__all__ = ["box_generator", "cpc", "finetune", "openworld", "prosam", "ssprompt"]
