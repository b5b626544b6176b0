"""The probe's JSON export: what it holds, and the checks an import makes before changing anything."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from samkit.errors import bad_argument
from samkit.widgets.state import PromptState, Snapshot

EXPORT_FORMAT = "samkit.prompt_probe/1"
MAX_JITTER_SAMPLES = 256


@dataclass
class Imported:
    """A checked import: everything the probe restores."""

    snapshot: Snapshot
    variants: dict[str, Snapshot]
    jitter: float
    jitter_samples: int
    model: str | None


def check_jitter(value: Any, name: str = "jitter") -> float:
    """A jitter std in pixels: a finite number >= 0."""
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        raise bad_argument(name, "a number of pixels >= 0", value) from None
    if not np.isfinite(sigma) or sigma < 0:
        raise bad_argument(name, "a number of pixels >= 0", value)
    return sigma


def check_samples(value: Any, name: str = "jitter_samples") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_JITTER_SAMPLES:
        raise bad_argument(name, f"an int in [1, {MAX_JITTER_SAMPLES}]", value)
    return value


def export_text(state: PromptState, image_sha256: str, model_name: str, checkpoint_sha256: str | None,
                jitter: float, jitter_samples: int, scores: dict | None, variants: dict[str, Snapshot]) -> str:
    """The export: tied to one image by its sha256; scores are for reading, an import recomputes them."""
    data = {
        "format": EXPORT_FORMAT,
        "image_sha256": image_sha256,
        "image_size": list(state.image_size),
        "model": model_name,
        "checkpoint_sha256": checkpoint_sha256,
        **state.current.to_dict(),
        "scores": scores,
        "variants": [{"name": name, **snapshot.to_dict()} for name, snapshot in variants.items()],
    }
    data["options"].update(jitter=jitter, jitter_samples=jitter_samples)
    return json.dumps(data, indent=1)


def parse_export(text: Any, state: PromptState, image_sha256: str) -> Imported:
    """Check an export against this image and state; raise ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise bad_argument("prompts_json", "the JSON text of an export", text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad_argument("prompts_json", f"valid JSON ({error.msg} at character {error.pos})", text) from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise bad_argument("prompts_json", f'an export with "format": "{EXPORT_FORMAT}"',
                           data.get("format") if isinstance(data, dict) else data)
    if data.get("image_sha256") != image_sha256:
        raise bad_argument("prompts_json", f"prompts for this image (sha256 {image_sha256[:12]}...)",
                           f"prompts for image sha256 {str(data.get('image_sha256'))[:12]}...")
    snapshot = state.snapshot_from_dict(data, "prompts_json")
    options = data.get("options") or {}
    jitter = check_jitter(options.get("jitter", 0.0), "prompts_json.options.jitter")
    samples = check_samples(options.get("jitter_samples", 16), "prompts_json.options.jitter_samples")
    variants_data = data.get("variants") or []
    if not isinstance(variants_data, list):
        raise bad_argument("prompts_json.variants", "a list", variants_data)
    variants = {}
    for i, variant in enumerate(variants_data):
        if not isinstance(variant, dict) or not isinstance(variant.get("name"), str):
            raise bad_argument(f"prompts_json.variants[{i}]", 'a dict with a "name"', variant)
        variants[variant["name"]] = state.snapshot_from_dict(variant, f"prompts_json.variants[{i}]")
    model = data.get("model")
    return Imported(snapshot, variants, jitter, samples, model if isinstance(model, str) else None)
