"""`PromptProbe`: click, drag and compare prompts against SAM in JupyterLab (an anywidget).

The browser only draws and reports gestures; every rule lives in Python: the prompt state
(`samkit.widgets.state`), the decoding (`samkit.widgets.inference`) and "copy as Python"
(`samkit.widgets.codegen`). A gesture in the browser and a call such as `probe.click(x, y)`
go through the same handler, `PromptProbe.handle`, so the notebook can drive and test the
probe headlessly.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from samkit.errors import bad_argument
from samkit.images import ImageLike, as_rgb_uint8
from samkit.metrics import dice, iou
from samkit.models.base import SamAdapter
from samkit.models.text_tinysam import TextTinySam, from_adapter
from samkit.predictor import Predictor
from samkit.viz import PALETTE
from samkit.widgets import codegen, exchange
from samkit.widgets.inference import ChainMemo, ProbeResult, iou_to, jitter_masks, pack_masks, predict_snapshot
from samkit.widgets.state import NEGATIVE, POSITIVE, CanvasTransform, PromptState, Snapshot

HERE = Path(__file__).resolve().parent
HIT_RADIUS_PX = 8.0  # CSS pixels: a click this close to a point removes the point
CHANGED_IOU = 0.9  # a jittered mask with IoU below this (to the unjittered one) counts as changed
SPREAD_MAX_SIDE = 512  # the jitter frequency map is sent at most this large (it is a heat map)
MAX_TIMINGS = 1000
# What the browser may send; each type has a handler `_on_<type>`.
MESSAGE_TYPES = ("click", "box", "remove_box", "undo", "redo", "clear", "options", "save_variant",
                 "load_variant", "remove_variant", "import", "name", "drawn")


@dataclass
class Variant:
    """A named prompt state kept for side-by-side comparison, with its result mask."""

    name: str
    snapshot: Snapshot
    mask: np.ndarray
    score: float


def _as_predictor(model_or_predictor: Any) -> Predictor:
    if isinstance(model_or_predictor, Predictor):
        return model_or_predictor
    if isinstance(model_or_predictor, SamAdapter):
        return Predictor(model_or_predictor)
    raise bad_argument("model_or_predictor", "a samkit.Predictor or a model from samkit.load_model(...)",
                       model_or_predictor)


def _png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # fast: sent once per image
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_gt(gt_mask: Any, size: tuple[int, int]) -> np.ndarray | None:
    if gt_mask is None:
        return None
    if hasattr(gt_mask, "detach"):
        gt_mask = gt_mask.detach().cpu().numpy()
    mask = np.asarray(gt_mask)
    if mask.shape != tuple(size) or not (mask.dtype == bool or np.isin(mask, (0, 1)).all()):
        raise bad_argument("gt_mask", f"a bool or {{0, 1}} mask of the image's size {size[0]} x {size[1]}", mask)
    return mask.astype(bool)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)


class PromptProbe(anywidget.AnyWidget):
    """Prompt SAM by hand and see all of its answer: candidates, scores, spread, code.

    In the browser: left click = positive point, right click or shift-click = negative point,
    drag = box, a click on a point removes it; keys z/y undo/redo, c clear, m multimask,
    f feed mask, x remove box, 1-4 show a candidate, s save variant (with the widget focused).
    With a `text_model` (`load_model("text_tinysam")`), a class name typed in the widget is a
    prompt too: where the name outscores the model's other names is drawn beside the clicks' answer.
    From Python: `click`, `drag_box`, `undo`, `redo`, `clear`, `set_options`, `save_variant`,
    `export_json` / `import_json`, `python_code`, `jitter_spread`, `prompt_name`.
    """

    _esm = HERE / "probe.js"
    _css = HERE / "probe.css"

    view = traitlets.Dict().tag(sync=True)  # everything the browser draws except pixels
    image_png = traitlets.Unicode("").tag(sync=True)  # the image, once per set_image
    masks = traitlets.Bytes(b"").tag(sync=True)  # 4 bit-packed masks: 3 candidates + single
    spread = traitlets.Bytes(b"").tag(sync=True)  # jitter frequency map, uint8 0..255
    variant_masks = traitlets.Bytes(b"").tag(sync=True)  # one bit-packed mask per variant
    status = traitlets.Unicode("").tag(sync=True)  # image status: encoding / ready
    name_mask = traitlets.Bytes(b"").tag(sync=True)  # the class name prompt's mask, bit-packed

    def __init__(self, model_or_predictor: Predictor | SamAdapter, image: ImageLike, gt_mask: Any = None, *,
                 multimask: bool = True, feed_mask: bool = False, jitter: float = 0.0,
                 jitter_samples: int = 16, display_width: int = 480, seed: int = 0,
                 text_model: SamAdapter | None = None):
        super().__init__()
        self.predictor = _as_predictor(model_or_predictor)
        # A model that segments by class name: its own Predictor caches its embedding of the image.
        self.text_model: TextTinySam | None = None if text_model is None else from_adapter(text_model, "text_model")
        self.text_predictor = None if text_model is None else Predictor(text_model)
        self.name: str | None = None
        self.name_result: np.ndarray | None = None  # (H, W) bool: the name's mask
        if not isinstance(display_width, int) or not 64 <= display_width <= 4096:
            raise bad_argument("display_width", "an int in [64, 4096] (CSS pixels)", display_width)
        self.display_width, self.seed = display_width, int(seed)
        self.jitter_samples = exchange.check_samples(jitter_samples)
        self.memo = ChainMemo()
        self.result: ProbeResult | None = None
        self.variants: dict[str, Variant] = {}
        self.timings: list[dict] = []
        self.jitter = exchange.check_jitter(jitter)
        self._version, self._message, self._error = 0, "", False
        self.on_msg(self._on_frontend_message)
        self.state = PromptState((1, 1))
        self.state.set_options(multimask=multimask, feed_mask=feed_mask)  # checks them; kept by reset
        self.set_image(image, gt_mask)

    # ---- the image ------------------------------------------------------------------------
    def set_image(self, image: ImageLike, gt_mask: Any = None) -> PromptProbe:
        """Show a new image: encode it once (or take its embedding from the cache); reset prompts."""
        canonical = as_rgb_uint8(image, "image")
        gt = _check_gt(gt_mask, canonical.shape[:2])
        self.status = "encoding the image (runs SAM's image encoder once)..."
        calls, start = self.predictor.encoder_calls, time.perf_counter()
        try:
            self.predictor.set_image(canonical)
        except Exception as error:
            self.status = f"the image could not be encoded: {type(error).__name__}: {error}"
            raise
        seconds = time.perf_counter() - start
        encoded = self.predictor.encoder_calls > calls
        self.image, self.image_sha256, self.gt_mask = canonical, self.predictor.image_sha256, gt
        self.state.reset(canonical.shape[:2])
        self.name, self.name_result = None, None
        self.memo.clear()
        self.variants.clear()
        self.result = None
        self.image_png = _png_data_url(canonical)
        self.status = (f"ready: image encoded in {seconds:.2f} s" if encoded
                       else "ready: embedding from the cache (image encoder not run)")
        self._publish(message="new image: click on it")
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        return self.state.image_size

    def _ensure_image(self) -> None:
        """Point the Predictor back at this probe's image if something else set another one.

        Two probes (or a notebook cell) may share a Predictor; its memory cache holds both
        embeddings, so switching back runs no encoder.
        """
        if self.predictor.image_sha256 != self.image_sha256:
            self.predictor.set_image(self.image)

    # ---- the one handler for browser messages and Python calls ----------------------------
    def _on_frontend_message(self, _widget, content: dict, _buffers) -> None:
        # A comm handler has no caller to raise to: show the error in the widget instead.
        try:
            self.handle(content)
        except Exception as error:  # noqa: BLE001 (anything here would otherwise vanish into the kernel log)
            self._error, self._message = True, f"{type(error).__name__}: {error}"
            # The last good view with the error on it: nothing is recomputed, so this cannot fail again.
            self._version += 1
            self.view = {**self.view, "version": self._version, "origin": content.get("origin"),
                         "seq": content.get("seq"), "message": self._message, "error": True}

    def handle(self, content: dict) -> ProbeResult | None:
        """Apply one message, {"type": ..., ...}, as the browser sends it; return the new result."""
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            raise bad_argument("content", 'a message {"type": ...}', content)
        kind = content["type"]
        if kind not in MESSAGE_TYPES:
            raise bad_argument("content.type", f"one of {', '.join(MESSAGE_TYPES)}", kind)
        handler = getattr(self, f"_on_{kind}")
        start = time.perf_counter()
        message = handler(content)
        if kind == "drawn":
            return self.result
        self._error, self._message = False, message or ""
        self._publish(origin=content.get("origin"), seq=content.get("seq"), started=start)
        return self.result

    def _transform(self, content: dict) -> CanvasTransform:
        """The canvas the gesture happened on, or the default display size for Python calls."""
        if "canvas" in content:
            return CanvasTransform(self.image_size, tuple(content["canvas"]))
        height, width = self.image_size
        scale = self.display_width / width
        return CanvasTransform(self.image_size, (height * scale, width * scale))

    def _on_click(self, content: dict) -> str:
        label = content.get("label", POSITIVE)
        transform = self._transform(content)
        x, y = (transform.to_image(content.get("x"), content.get("y")) if "canvas" in content
                else (content.get("x"), content.get("y")))
        radius = content.get("radius", HIT_RADIUS_PX / transform.scale)
        action = self.state.click(x, y, label, radius=radius)
        kind = "positive" if label == POSITIVE else "negative"
        return f"{action} a point" if action == "removed" else f"added a {kind} point at ({x:.0f}, {y:.0f})"

    def _on_box(self, content: dict) -> str:
        corners = [content.get(key) for key in ("x0", "y0", "x1", "y1")]
        if "canvas" in content:
            transform = self._transform(content)
            corners = [*transform.to_image(corners[0], corners[1], clip=True),
                       *transform.to_image(corners[2], corners[3], clip=True)]
        self.state.set_box(*corners)
        return "box set"

    def _on_remove_box(self, _content: dict) -> str:
        return "box removed" if self.state.remove_box() else "no box to remove"

    def _on_undo(self, _content: dict) -> str:
        return "undone" if self.state.undo() else "nothing to undo"

    def _on_redo(self, _content: dict) -> str:
        return "redone" if self.state.redo() else "nothing to redo"

    def _on_clear(self, _content: dict) -> str:
        return "cleared" if self.state.clear() else "nothing to clear"

    def _on_options(self, content: dict) -> str:
        options = {key: content[key] for key in ("multimask", "feed_mask") if key in content}
        jitter = exchange.check_jitter(content.get("jitter", self.jitter))  # check all before changing any
        self.state.set_options(**options)
        self.jitter = jitter
        return "options: " + ", ".join(f"{key}={content[key]}" for key in ("multimask", "feed_mask", "jitter")
                                       if key in content)

    def _on_save_variant(self, content: dict) -> str:
        if self.result is None:
            raise bad_argument("save_variant", "prompts on the image first", None)
        name = str(content.get("name") or "").strip() or f"v{len(self.variants) + 1}"
        while name in self.variants and not content.get("name"):
            name += "'"
        self.variants[name] = Variant(name, self.state.current, self.result.mask.copy(), self.result.score)
        return f"saved variant {name!r}"

    def _on_load_variant(self, content: dict) -> str:
        name = content.get("name")
        if name not in self.variants:
            raise bad_argument("name", f"one of the variants {sorted(self.variants)}", name)
        self.state.restore(self.variants[name].snapshot)
        return f"loaded variant {name!r}"

    def _on_remove_variant(self, content: dict) -> str:
        name = content.get("name")
        if self.variants.pop(name, None) is None:
            raise bad_argument("name", f"one of the variants {sorted(self.variants)}", name)
        return f"removed variant {name!r}"

    def _on_import(self, content: dict) -> str:
        return self._import(content.get("json"))

    def _on_name(self, content: dict) -> str:
        name = content.get("name")
        if self.text_model is None:
            raise bad_argument("text_model", "a model that segments by class name, given as "
                               "PromptProbe(..., text_model=load_model('text_tinysam'))", None)
        if name is None or (isinstance(name, str) and not name.strip()):
            self.name, self.name_result = None, None
            return "class name prompt removed"
        if not isinstance(name, str):
            raise bad_argument("name", "a class name such as 'crab' (or None to remove it)", name)
        self.name = name.strip()
        self.text_predictor.set_image(self.image)  # the cache: encoded once per image
        self.name_result = self.text_model.name_mask(self.text_predictor.embedding, self.name)
        known = "" if self.name in self.text_model.class_names else " (a name it was not trained on)"
        return (f"segmented by name: {self.name!r}{known}, {int(self.name_result.sum())} px where it outscores "
                f"the model's {len(self.text_model.class_names) - (self.name in self.text_model.class_names)} other names")

    def _on_drawn(self, content: dict) -> None:
        """The browser's report: transfer and draw time of an update it asked for."""
        for entry in reversed(self.timings):
            if entry.get("seq") == content.get("seq") and entry.get("origin") == content.get("origin"):
                entry.update({key: float(content[key]) for key in ("transfer_ms", "draw_ms", "total_ms")
                              if isinstance(content.get(key), (int, float))})
                break

    # ---- Python API (each call is a message through `handle`) -----------------------------
    def click(self, x: float, y: float, label: int = POSITIVE, radius: float | None = None) -> ProbeResult | None:
        """Click at image pixel (x, y): label 1 positive, 0 negative; on a point: remove it."""
        message = {"type": "click", "x": x, "y": y, "label": label}
        if radius is not None:
            message["radius"] = radius
        return self.handle(message)

    def negative_click(self, x: float, y: float) -> ProbeResult | None:
        return self.click(x, y, NEGATIVE)

    def drag_box(self, x0: float, y0: float, x1: float, y1: float) -> ProbeResult | None:
        """A box from two corners (image pixels, any order)."""
        return self.handle({"type": "box", "x0": x0, "y0": y0, "x1": x1, "y1": y1})

    def remove_box(self) -> ProbeResult | None:
        return self.handle({"type": "remove_box"})

    def undo(self) -> ProbeResult | None:
        return self.handle({"type": "undo"})

    def redo(self) -> ProbeResult | None:
        return self.handle({"type": "redo"})

    def clear(self) -> ProbeResult | None:
        return self.handle({"type": "clear"})

    def set_options(self, multimask: bool | None = None, feed_mask: bool | None = None,
                    jitter: float | None = None) -> ProbeResult | None:
        """multimask: show SAM's pick of 3 (True) or its single mask; feed_mask: pass the
        previous result's low-res mask as `mask_input`; jitter: std of prompt noise in pixels."""
        options = {key: value for key, value in
                   (("multimask", multimask), ("feed_mask", feed_mask), ("jitter", jitter)) if value is not None}
        return self.handle({"type": "options", **options})

    def save_variant(self, name: str | None = None) -> ProbeResult | None:
        """Keep the current prompts and mask under `name` (default v1, v2, ...)."""
        return self.handle({"type": "save_variant", "name": name})

    def load_variant(self, name: str) -> ProbeResult | None:
        return self.handle({"type": "load_variant", "name": name})

    def remove_variant(self, name: str) -> ProbeResult | None:
        return self.handle({"type": "remove_variant", "name": name})

    def prompt_name(self, name: str | None) -> np.ndarray | None:
        """Segment the class `name` with the text model (None removes it); returns its (H, W) mask."""
        self.handle({"type": "name", "name": name})
        return self.name_result

    def import_json(self, text: str) -> ProbeResult | None:
        """Restore prompts, options and variants from `export_json` text (same image only)."""
        return self.handle({"type": "import", "json": text})

    # ---- reading the probe ----------------------------------------------------------------
    @property
    def points(self) -> np.ndarray:
        return np.asarray(self.state.prompts.points, dtype=np.float32).reshape(-1, 2)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.state.prompts.labels, dtype=np.int64)

    @property
    def box(self) -> np.ndarray | None:
        box = self.state.prompts.box
        return None if box is None else np.asarray(box, dtype=np.float32)

    def summary(self) -> dict:
        """Scores (and true IoU / Dice with a gt_mask) of each candidate and the single mask."""
        return self._result_view()

    def variant_ious(self) -> tuple[list[str], np.ndarray]:
        """Names (the variants, then "current") and the IoU between every pair of their masks."""
        names = list(self.variants)
        masks = [variant.mask for variant in self.variants.values()]
        if self.result is not None:
            names.append("current")
            masks.append(self.result.mask)
        matrix = np.ones((len(masks), len(masks)))
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                matrix[i, j] = matrix[j, i] = iou(masks[i], masks[j])
        return names, matrix

    def jitter_spread(self, sigma: float, samples: int | None = None) -> dict:
        """Perturb the current prompts `samples` times by N(0, sigma^2) pixels; the masks' spread.

        Returns frequency (H, W): the share of samples covering each pixel; ious (samples,):
        IoU of each sample's mask to the unjittered result; and their summary statistics.
        Seeded, so the same prompts and sigma give the same samples.
        """
        if self.result is None:
            raise bad_argument("prompts", "a click or a box before jittering", None)
        samples = self.jitter_samples if samples is None else samples
        self._ensure_image()
        snapshot = self.state.current
        mask_input = self.memo.get((snapshot.chain, snapshot.multimask)) if snapshot.chain else None
        rng = np.random.default_rng([self.seed, int(round(float(sigma) * 1000))])
        masks = jitter_masks(self.predictor, snapshot.prompts, float(sigma), samples, rng,
                             snapshot.multimask, mask_input)
        ious = iou_to(masks, self.result.mask)
        return {"sigma": float(sigma), "samples": samples, "frequency": masks.mean(axis=0), "ious": ious,
                "iou_mean": float(ious.mean()), "iou_min": float(ious.min()), "iou_max": float(ious.max()),
                "changed": float((ious < CHANGED_IOU).mean())}

    def python_code(self) -> str:
        """The `predictor.predict(...)` call(s) that reproduce the current masks."""
        return codegen.python_code(self.state.current, self.predictor.model.name, self.image_sha256)

    def export_json(self) -> str:
        """Prompts, options, scores and variants as JSON, tied to this image by its sha256."""
        return exchange.export_text(self.state, self.image_sha256, self.predictor.model.name,
                                    self.predictor.model.checkpoint_sha256, self.jitter, self.jitter_samples,
                                    self._result_view(), {name: v.snapshot for name, v in self.variants.items()})

    # ---- internals ------------------------------------------------------------------------
    def _import(self, text: Any) -> str:
        imported = exchange.parse_export(text, self.state, self.image_sha256)  # checks everything first
        self.jitter, self.jitter_samples = imported.jitter, imported.jitter_samples
        self._ensure_image()
        self.variants = {}
        for name, snapshot in imported.variants.items():
            result = predict_snapshot(self.predictor, snapshot, self.memo)
            if result is not None:
                self.variants[name] = Variant(name, snapshot, result.mask, result.score)
        self.state.restore(imported.snapshot)
        prompts = imported.snapshot.prompts
        note = f" (made with model {imported.model!r})" if imported.model != self.predictor.model.name else ""
        return f"imported {len(prompts.points)} points{' and a box' if prompts.box else ''}{note}"

    def _metrics(self, mask: np.ndarray) -> dict:
        row = {"area": int(mask.sum())}
        if self.gt_mask is not None:
            row["iou"] = round(float(iou(mask, self.gt_mask)), 4)
            row["dice"] = round(float(dice(mask, self.gt_mask)), 4)
        return row

    def _result_view(self) -> dict | None:
        result = self.result
        if result is None:
            return None
        candidates = [{"score": round(float(score), 4), **self._metrics(mask)}
                      for mask, score in zip(result.masks, result.scores)]
        return {"candidates": candidates,
                "single": {"score": round(result.single_score, 4), **self._metrics(result.single_mask)},
                "pick": result.pick, "multimask": result.multimask,
                "shown": result.pick if result.multimask else 3, "score": round(result.score, 4)}

    def _jitter_view(self) -> tuple[dict | None, bytes]:
        if self.result is None or self.jitter <= 0:
            return None, b""
        spread = self.jitter_spread(self.jitter)
        frequency = spread.pop("frequency")
        step = max(1, -(-max(frequency.shape) // SPREAD_MAX_SIDE))
        frequency = np.round(frequency[::step, ::step] * 255).astype(np.uint8)
        ious = spread.pop("ious")
        view = {key: round(value, 4) if isinstance(value, float) else value for key, value in spread.items()}
        view.update(height=frequency.shape[0], width=frequency.shape[1], changed_iou=CHANGED_IOU,
                    iou_sorted=[round(float(v), 3) for v in np.sort(ious)])
        return view, frequency.tobytes()

    def _publish(self, origin: str | None = None, seq: int | None = None, started: float | None = None,
                 recompute: bool = True, message: str | None = None) -> None:
        """Recompute the masks for the current state and send the browser one update."""
        if message is not None:
            self._message, self._error = message, False
        started = time.perf_counter() if started is None else started
        decode_s = jitter_s = 0.0
        if recompute:
            tick = time.perf_counter()
            self._ensure_image()
            self.result = predict_snapshot(self.predictor, self.state.current, self.memo)
            decode_s = time.perf_counter() - tick
        tick = time.perf_counter()
        jitter_view, spread = self._jitter_view()
        jitter_s = time.perf_counter() - tick
        tick = time.perf_counter()
        names, matrix = self.variant_ious()
        variants = [{"name": v.name, "score": round(v.score, 4), "points": len(v.snapshot.prompts.points),
                     "box": v.snapshot.prompts.box is not None, **self._metrics(v.mask)}
                    for v in self.variants.values()]
        masks = pack_masks(self.result.all_masks) if self.result is not None else b""
        name_mask = pack_masks(self.name_result[None]) if self.name_result is not None else b""
        name_view = {"available": self.text_model is not None, "name": self.name,
                     **(self._metrics(self.name_result) if self.name_result is not None else {})}
        variant_masks = pack_masks(np.stack([v.mask for v in self.variants.values()])) if self.variants else b""
        export_json, python_code = self.export_json(), self.python_code()
        height, width = self.image_size
        self._version += 1
        timing = {"decode_ms": _ms(decode_s), "jitter_ms": _ms(jitter_s),
                  "encode_ms": _ms(time.perf_counter() - tick)}
        timing["python_ms"] = _ms(time.perf_counter() - started)  # the trait sync itself comes after
        prompts = self.state.prompts
        view = {
            "version": self._version, "origin": origin, "seq": seq,
            "image": {"height": height, "width": width, "sha256": self.image_sha256},
            "model": self.predictor.model.name, "display_width": self.display_width, "hit_radius": HIT_RADIUS_PX,
            "points": [list(p) for p in prompts.points], "labels": list(prompts.labels),
            "box": list(prompts.box) if prompts.box is not None else None,
            "options": {"multimask": self.state.current.multimask, "feed_mask": self.state.current.feed_mask,
                        "jitter": self.jitter, "jitter_samples": self.jitter_samples,
                        "jitter_max": max(8, int(round(0.15 * max(height, width))))},
            "chain_length": len(self.state.current.chain),
            "result": self._result_view(), "has_gt": self.gt_mask is not None,
            "jitter": jitter_view, "name": name_view,
            "variants": variants, "variant_ious": {"names": names, "matrix": np.round(matrix, 3).tolist()},
            "can_undo": self.state.can_undo, "can_redo": self.state.can_redo,
            "timing": timing, "message": self._message, "error": self._error,
            "export_json": export_json, "python_code": python_code,
            "colors": [list(color) for color in PALETTE],
        }
        self.timings.append({"seq": seq, "origin": origin, **timing})
        del self.timings[:-MAX_TIMINGS]
        with self.hold_sync():  # one comm message: the view and its pixels arrive together
            self.masks, self.spread, self.variant_masks, self.name_mask = masks, spread, variant_masks, name_mask
            self.view = view
