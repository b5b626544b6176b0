""""Copy as Python": the `predictor.predict(...)` calls that reproduce a probe view."""

from __future__ import annotations

from samkit.widgets.state import Prompts, Snapshot


def _numbers(values) -> str:
    return ", ".join(repr(float(v)) if isinstance(v, float) else repr(v) for v in values)


def predict_call(prompts: Prompts, multimask: bool, feed_previous: bool = False) -> str:
    """One `masks, scores, low_res = predictor.predict(...)` statement for a prompt set."""
    lines = ["masks, scores, low_res = predictor.predict("]
    if prompts.points:
        points = ", ".join(f"[{_numbers(point)}]" for point in prompts.points)
        lines.append(f"    points=np.array([{points}]),")
        lines.append(f"    labels=np.array([{_numbers(prompts.labels)}]),")
    if prompts.box is not None:
        lines.append(f"    box=np.array([{_numbers(prompts.box)}]),")
    if feed_previous:
        lines.append("    mask_input=low_res[scores.argmax()][None],  # the previous result's low-res logits")
    lines.append(f"    multimask={multimask},")
    lines.append(")")
    return "\n".join(lines)


def python_code(snapshot: Snapshot, model_name: str, image_sha256: str) -> str:
    """Python source that recomputes the probe's masks with a `predictor` on the same image.

    With feed_mask on, the calls of the chain come first, each feeding its result's low-res
    mask to the next, exactly as the probe did click by click.
    """
    header = [
        f"# The prompt probe's view: model {model_name!r}, image sha256 {image_sha256[:16]}...",
        f'# predictor = samkit.Predictor(samkit.load_model("{model_name}")); predictor.set_image(image)',
        "import numpy as np",
        "",
    ]
    if snapshot.prompts.empty:
        return "\n".join(header + ["# no prompts yet: click on the image"]) + "\n"
    links = list(snapshot.chain) + [snapshot.prompts] if snapshot.feed_mask else [snapshot.prompts]
    calls = [predict_call(link, snapshot.multimask, feed_previous=i > 0) for i, link in enumerate(links)]
    pick = ("best = int(scores.argmax())  # SAM's pick: the highest predicted IoU" if snapshot.multimask
            else "best = 0  # multimask=False: SAM's single mask")
    return "\n".join(header + calls + [pick, "mask = masks[best]"]) + "\n"
