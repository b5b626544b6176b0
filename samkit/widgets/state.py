"""The prompt probe's state, in plain Python: prompts in image pixels, canvas geometry, undo/redo.

Nothing here knows about widgets, torch or the browser, so every rule of the probe (where a
click lands, which click removes a point, what undo restores, what an export holds) is a
small function that a unit test can call directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from samkit.errors import bad_argument

Size = tuple[int, int]  # (height, width)
POSITIVE, NEGATIVE = 1, 0
COORDINATE_DECIMALS = 1  # clicks are kept to 0.1 px: exact in JSON, readable in code


def _finite_number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad_argument(name, "a number", value) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise bad_argument(name, "a finite number", value)
    return number


def _check_size(size: Any, name: str) -> Size:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, float)) and s > 0 for s in size)):
        raise bad_argument(name, "(height, width) with positive sides", size)
    return float(size[0]), float(size[1])


@dataclass(frozen=True)
class CanvasTransform:
    """Maps between canvas (CSS) pixels and original image pixels.

    The image is drawn as large as fits in the canvas, aspect ratio kept, centred
    (letterboxed), which is what `drawImage` with a fitted rectangle does.
    """

    image_size: Size  # (H, W) of the original image
    canvas_size: Size  # (height, width) of the canvas as displayed, in CSS pixels

    def __post_init__(self):
        object.__setattr__(self, "image_size", _check_size(self.image_size, "image_size"))
        object.__setattr__(self, "canvas_size", _check_size(self.canvas_size, "canvas_size"))

    @property
    def scale(self) -> float:
        """Canvas pixels per image pixel."""
        (image_h, image_w), (canvas_h, canvas_w) = self.image_size, self.canvas_size
        return min(canvas_w / image_w, canvas_h / image_h)

    @property
    def offset(self) -> tuple[float, float]:
        """(x, y) of the image's top-left corner on the canvas."""
        (image_h, image_w), (canvas_h, canvas_w) = self.image_size, self.canvas_size
        return (canvas_w - image_w * self.scale) / 2, (canvas_h - image_h * self.scale) / 2

    def to_image(self, x: float, y: float, clip: bool = False) -> tuple[float, float]:
        """Canvas (x, y) -> image (x, y). Outside the image: ValueError, or clipped if `clip`."""
        x, y = _finite_number(x, "x"), _finite_number(y, "y")
        offset_x, offset_y = self.offset
        image_x, image_y = (x - offset_x) / self.scale, (y - offset_y) / self.scale
        height, width = self.image_size
        if clip:
            return min(max(image_x, 0.0), width), min(max(image_y, 0.0), height)
        if not (0 <= image_x <= width and 0 <= image_y <= height):
            raise bad_argument("x, y", f"a canvas point on the {width:g} x {height:g} image",
                               f"({x:.1f}, {y:.1f}), which is image ({image_x:.1f}, {image_y:.1f})")
        return image_x, image_y

    def to_canvas(self, x: float, y: float) -> tuple[float, float]:
        """Image (x, y) -> canvas (x, y)."""
        offset_x, offset_y = self.offset
        return x * self.scale + offset_x, y * self.scale + offset_y


@dataclass(frozen=True)
class Prompts:
    """One prompt set as SAM takes it: clicks (x, y) with labels, and an optional XYXY box."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    def to_dict(self) -> dict:
        return {"points": [list(p) for p in self.points], "labels": list(self.labels),
                "box": list(self.box) if self.box is not None else None}

    @staticmethod
    def from_dict(data: Any, image_size: Size, name: str = "prompts") -> Prompts:
        """Check and build prompts from {"points", "labels", "box"} (a JSON export)."""
        if not isinstance(data, dict):
            raise bad_argument(name, 'a dict with "points", "labels" and "box"', data)
        points, labels = data.get("points") or [], data.get("labels") or []
        if not isinstance(points, list) or not isinstance(labels, list) or len(points) != len(labels):
            raise bad_argument(f"{name}.points/labels", "two lists of equal length",
                               f"points {points!r} and labels {labels!r}")
        height, width = image_size
        checked = []
        for i, point in enumerate(points):
            if not isinstance(point, (list, tuple)) or len(point) != 2:
                raise bad_argument(f"{name}.points[{i}]", "[x, y]", point)
            x, y = (_finite_number(v, f"{name}.points[{i}]") for v in point)
            if not (0 <= x <= width and 0 <= y <= height):
                raise bad_argument(f"{name}.points[{i}]", f"a point inside the {width} x {height} (W x H) image",
                                   point)
            checked.append((x, y))
        for i, label in enumerate(labels):
            if label not in (POSITIVE, NEGATIVE) or isinstance(label, bool):
                raise bad_argument(f"{name}.labels[{i}]", "1 (positive) or 0 (negative)", label)
        box = data.get("box")
        if box is not None:
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise bad_argument(f"{name}.box", "[x0, y0, x1, y1] or null", box)
            box = tuple(_finite_number(v, f"{name}.box") for v in box)
            if not (0 <= box[0] <= box[2] <= width and 0 <= box[1] <= box[3] <= height):
                raise bad_argument(f"{name}.box", f"x0 <= x1, y0 <= y1 inside the {width} x {height} image", box)
        return Prompts(tuple(checked), tuple(int(label) for label in labels), box)


@dataclass(frozen=True)
class Snapshot:
    """Everything undo restores: the prompts, the output mode, and the mask-feeding chain.

    `chain` lists the earlier prompt sets whose masks were fed forward (oldest first): with
    `feed_mask`, each edit decodes with the previous prediction's low-res mask as
    `mask_input`, so the current masks depend on that history, and undo must restore it.
    """

    prompts: Prompts = Prompts()
    multimask: bool = True
    feed_mask: bool = False
    chain: tuple[Prompts, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready data; `PromptState.snapshot_from_dict` reads it back."""
        return {**self.prompts.to_dict(),
                "options": {"multimask": self.multimask, "feed_mask": self.feed_mask},
                "chain": [link.to_dict() for link in self.chain]}


@dataclass
class PromptState:
    """The probe's prompts, with undo/redo. Coordinates are original image pixels (x, y)."""

    image_size: Size  # (H, W)
    current: Snapshot = field(default_factory=Snapshot)
    undo_stack: list[Snapshot] = field(default_factory=list)
    redo_stack: list[Snapshot] = field(default_factory=list)
    max_history: int = 500

    def __post_init__(self):
        height, width = _check_size(self.image_size, "image_size")
        self.image_size = (int(height), int(width))

    # ---- reading -----------------------------------------------------------------------
    @property
    def prompts(self) -> Prompts:
        return self.current.prompts

    @property
    def can_undo(self) -> bool:
        return bool(self.undo_stack)

    @property
    def can_redo(self) -> bool:
        return bool(self.redo_stack)

    def nearest_point(self, x: float, y: float, radius: float) -> int | None:
        """Index of the click within `radius` image pixels of (x, y) (the closest), or None."""
        best, best_distance = None, float(radius) ** 2
        for i, (px, py) in enumerate(self.prompts.points):
            distance = (px - x) ** 2 + (py - y) ** 2
            if distance <= best_distance:
                best, best_distance = i, distance
        return best

    # ---- editing (each edit is one undo step) -----------------------------------------------
    def _commit(self, snapshot: Snapshot) -> bool:
        if snapshot == self.current:
            return False
        self.undo_stack.append(self.current)
        del self.undo_stack[:-self.max_history]
        self.redo_stack.clear()
        self.current = snapshot
        return True

    def _edit_prompts(self, prompts: Prompts) -> bool:
        # With feed_mask on, the prompts being replaced become the last link of the chain.
        old = self.current
        chain = (old.chain + ((old.prompts,) if not old.prompts.empty else ())) if old.feed_mask else ()
        if prompts.empty:
            chain = ()  # nothing left to predict: the history of masks is gone too
        return self._commit(replace(old, prompts=prompts, chain=chain))

    def _check_xy(self, x: Any, y: Any) -> tuple[float, float]:
        x, y = _finite_number(x, "x"), _finite_number(y, "y")
        height, width = self.image_size
        if not (0 <= x <= width and 0 <= y <= height):
            raise bad_argument("x, y", f"a point inside the {width} x {height} (W x H) image", (x, y))
        return round(x, COORDINATE_DECIMALS), round(y, COORDINATE_DECIMALS)

    def add_point(self, x: float, y: float, label: int = POSITIVE) -> bool:
        """Add a click; label 1 positive, 0 negative."""
        if label not in (POSITIVE, NEGATIVE) or isinstance(label, bool):
            raise bad_argument("label", "1 (positive) or 0 (negative)", label)
        point = self._check_xy(x, y)
        prompts = self.prompts
        return self._edit_prompts(replace(prompts, points=prompts.points + (point,),
                                          labels=prompts.labels + (int(label),)))

    def remove_point(self, index: int) -> bool:
        prompts = self.prompts
        if not isinstance(index, int) or not 0 <= index < len(prompts.points):
            raise bad_argument("index", f"a point index in [0, {len(prompts.points)})", index)
        keep = [i for i in range(len(prompts.points)) if i != index]
        return self._edit_prompts(replace(prompts, points=tuple(prompts.points[i] for i in keep),
                                          labels=tuple(prompts.labels[i] for i in keep)))

    def click(self, x: float, y: float, label: int = POSITIVE, radius: float = 0.0) -> str:
        """A click: removes the point within `radius` if there is one, else adds a point.

        Returns "removed" or "added".
        """
        x, y = self._check_xy(x, y)
        radius = _finite_number(radius, "radius")
        hit = self.nearest_point(x, y, radius) if radius > 0 else None
        if hit is not None:
            self.remove_point(hit)
            return "removed"
        self.add_point(x, y, label)
        return "added"

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Set the box from two corners in any order (a drag), clipped to the image."""
        height, width = self.image_size
        xs = sorted(min(max(_finite_number(v, "box"), 0.0), width) for v in (x0, x1))
        ys = sorted(min(max(_finite_number(v, "box"), 0.0), height) for v in (y0, y1))
        box = tuple(round(v, COORDINATE_DECIMALS) for v in (xs[0], ys[0], xs[1], ys[1]))
        return self._edit_prompts(replace(self.prompts, box=box))

    def remove_box(self) -> bool:
        return self._edit_prompts(replace(self.prompts, box=None))

    def clear(self) -> bool:
        return self._edit_prompts(Prompts())

    def restore(self, snapshot: Snapshot) -> bool:
        """Go to a saved snapshot (a variant, an import) as one undo step."""
        if not isinstance(snapshot, Snapshot):
            raise bad_argument("snapshot", "a Snapshot", snapshot)
        return self._commit(snapshot)

    def set_prompts(self, prompts: Prompts) -> bool:
        """Replace all prompts at once (import, loading a variant): one undo step, a fresh chain."""
        return self._commit(replace(self.current, prompts=prompts, chain=()))

    def set_options(self, multimask: bool | None = None, feed_mask: bool | None = None) -> bool:
        """Change the output mode; switching `feed_mask` starts a new chain."""
        snapshot = self.current
        for name, value in (("multimask", multimask), ("feed_mask", feed_mask)):
            if value is not None and not isinstance(value, bool):
                raise bad_argument(name, "True or False", value)
        if multimask is not None:
            snapshot = replace(snapshot, multimask=multimask)
        if feed_mask is not None and feed_mask != snapshot.feed_mask:
            snapshot = replace(snapshot, feed_mask=feed_mask, chain=())
        return self._commit(snapshot)

    def undo(self) -> bool:
        if not self.undo_stack:
            return False
        self.redo_stack.append(self.current)
        self.current = self.undo_stack.pop()
        return True

    def redo(self) -> bool:
        if not self.redo_stack:
            return False
        self.undo_stack.append(self.current)
        self.current = self.redo_stack.pop()
        return True

    def reset(self, image_size: Size) -> None:
        """A new image: no prompts, no history (old coordinates mean nothing on it)."""
        height, width = _check_size(image_size, "image_size")
        self.image_size = (int(height), int(width))
        self.current = Snapshot(multimask=self.current.multimask, feed_mask=self.current.feed_mask)
        self.undo_stack.clear()
        self.redo_stack.clear()

    # ---- serialising ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The current prompts, options and chain as JSON-ready data."""
        return self.current.to_dict()

    def snapshot_from_dict(self, data: Any, name: str = "prompts") -> Snapshot:
        """Check `data` (from `to_dict` or a JSON export) against this image; build a Snapshot."""
        prompts = Prompts.from_dict(data, self.image_size, name)
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise bad_argument(f"{name}.options", "a dict", options)
        multimask, feed_mask = options.get("multimask", True), options.get("feed_mask", False)
        for key, value in (("multimask", multimask), ("feed_mask", feed_mask)):
            if not isinstance(value, bool):
                raise bad_argument(f"{name}.options.{key}", "true or false", value)
        chain_data = data.get("chain") or []
        if not isinstance(chain_data, list):
            raise bad_argument(f"{name}.chain", "a list of prompt sets", chain_data)
        chain = tuple(Prompts.from_dict(link, self.image_size, f"{name}.chain[{i}]")
                      for i, link in enumerate(chain_data)) if feed_mask else ()
        return Snapshot(prompts, multimask, feed_mask, chain)

    def load_dict(self, data: Any, name: str = "prompts") -> bool:
        """Restore prompts, options and chain from `to_dict` data, as one undo step."""
        return self.restore(self.snapshot_from_dict(data, name))
