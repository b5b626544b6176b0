"""The interactive prompt probe: `PromptProbe(model_or_predictor, image, gt_mask=None)`.

`PromptState` and `CanvasTransform` hold its rules in plain Python (no widget, no torch).
"""

from samkit.widgets.probe import PromptProbe
from samkit.widgets.state import CanvasTransform, PromptState, Prompts, Snapshot

__all__ = ["PromptProbe", "PromptState", "Prompts", "Snapshot", "CanvasTransform"]
