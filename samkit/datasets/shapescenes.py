"""ShapeScenes: seeded synthetic sea-floor scenes with instance and semantic masks.

Each scene is a background of 1-3 "stuff" regions (sand, water, rock) with 1-6
entities on top (starfish, crabs, kelp, ...). Every entity class has its own shape
family and its own texture, cut from one of scikit-image's bundled photos and tinted,
so a class is recognisable by shape *and* appearance. The entity classes are split
into base and novel classes (2:1), as in the open-vocabulary setting of CPC-SAM.

Scene ``i`` of a dataset depends only on ``(seed, split, i)`` (plus ``classes``,
``size`` and ``style``), so it is the same whatever order scenes are read in, and the
splits never share a scene. Everything is numpy: drawing a scene takes a few ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from samkit.errors import bad_argument

BASE_CLASSES: tuple[str, ...] = (
    "starfish", "pebble", "urchin", "kelp", "crab", "fish", "coral", "anemone",
)
NOVEL_CLASSES: tuple[str, ...] = ("shell", "jellyfish", "seahorse", "sponge")
ENTITY_CLASSES: tuple[str, ...] = BASE_CLASSES + NOVEL_CLASSES
STUFF_CLASSES: tuple[str, ...] = ("sand", "water", "rock")
# A class id is the index of its name in VOCABULARY; stuff ids come after entity ids.
VOCABULARY: tuple[str, ...] = ENTITY_CLASSES + STUFF_CLASSES

SPLITS = ("train", "val", "test")
CLASS_SETS = ("base", "novel", "all")
STYLES = (None, "ocean")

MIN_VISIBLE_FRACTION = 0.003  # instances hidden below this share of the image are dropped
MULTI_INSTANCE_PROBABILITY = 0.3  # scenes with 2-4 copies of one class (OpenWorldSAM queries)
MAX_ENTITIES = 6


# ---------------------------------------------------------------------------------------
# Textures: one bundled scikit-image photo per class, turned into a tinted pattern.
# (photo, RGB tint, contrast). Only photos that ship inside the scikit-image wheel, so
# nothing is downloaded. Stuff has low contrast so that entities stand out from it.
_TEXTURES: dict[str, tuple[str, tuple[float, float, float], float]] = {
    "starfish": ("brick", (0.95, 0.45, 0.15), 0.35),
    "pebble": ("coins", (0.80, 0.78, 0.74), 0.25),
    "urchin": ("chelsea", (0.45, 0.20, 0.55), 0.45),
    "kelp": ("grass", (0.35, 0.60, 0.15), 0.40),
    "crab": ("rocket", (0.85, 0.15, 0.12), 0.30),
    "fish": ("coffee", (0.95, 0.85, 0.25), 0.30),
    "coral": ("immunohistochemistry", (0.95, 0.50, 0.60), 0.35),
    "anemone": ("astronaut", (0.85, 0.30, 0.85), 0.35),
    "shell": ("text", (0.95, 0.90, 0.75), 0.20),
    "jellyfish": ("camera", (0.60, 0.70, 1.00), 0.30),
    "seahorse": ("cell", (1.00, 0.60, 0.20), 0.45),
    "sponge": ("retina", (0.90, 0.85, 0.30), 0.35),
    "sand": ("gravel", (0.80, 0.70, 0.50), 0.12),
    "water": ("hubble_deep_field", (0.20, 0.40, 0.65), 0.15),  # specks: plankton
    "rock": ("moon", (0.42, 0.40, 0.40), 0.20),
}

_PHOTOS: dict[str, np.ndarray] = {}  # photo name -> H x W float32 pattern, loaded once
_CLASS_TEXTURES: dict[tuple[str, int], np.ndarray] = {}  # (class, size) -> H x W x 3 uint8
_NOISE: dict[int, np.ndarray] = {}  # size -> a fixed 3 x 2size x 2size field of sensor noise


def _photo(name: str) -> np.ndarray:
    """The fine pattern of a bundled scikit-image photo: its luminance minus a blurred
    copy (so a class keeps one colour whatever part of the photo a crop shows),
    normalised to zero mean and unit std."""
    if name not in _PHOTOS:
        from scipy.ndimage import gaussian_filter
        from skimage import data  # imported lazily: scikit-image is slow to import

        image = np.asarray(getattr(data, name)(), dtype=np.float32)
        top, left = max(0, (image.shape[0] - 768) // 2), max(0, (image.shape[1] - 768) // 2)
        image = image[top:top + 768, left:left + 768]  # big photos: the middle is plenty
        if image.ndim == 3:
            image = image[..., :3].mean(axis=2)  # drop alpha, keep the pattern not the hue
        pattern = image - gaussian_filter(image, sigma=12.0)
        _PHOTOS[name] = (pattern - pattern.mean()) / (pattern.std() + 1e-6)
    return _PHOTOS[name]


def class_texture(name: str, size: int) -> np.ndarray:
    """The texture of class `name` as an RGB uint8 array at least `size` x `size`."""
    key = (name, size)
    if key not in _CLASS_TEXTURES:
        photo_name, tint, contrast = _TEXTURES[name]
        pattern = _photo(photo_name)
        # Small photos are mirrored out so that any size x size crop fits.
        pad_rows, pad_cols = max(0, size - pattern.shape[0]), max(0, size - pattern.shape[1])
        if pad_rows or pad_cols:
            pattern = np.pad(pattern, ((0, pad_rows), (0, pad_cols)), mode="symmetric")
        shade = 1.0 + contrast * np.clip(pattern, -2.5, 2.5)
        texture = np.clip(shade[..., None] * np.asarray(tint, np.float32), 0.0, 1.0)
        # uint8 keeps scenes fast: copying pixels is most of the work of drawing one.
        _CLASS_TEXTURES[key] = np.round(texture * 255.0).astype(np.uint8)
    return _CLASS_TEXTURES[key]


def _crop(texture: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random height x width window of a texture (a view, no copy)."""
    top = rng.integers(0, texture.shape[0] - height + 1)
    left = rng.integers(0, texture.shape[1] - width + 1)
    return texture[top:top + height, left:left + width]


# ---------------------------------------------------------------------------------------
# Shapes. Each draws one entity of radius ~r in its own frame: (u, v) are pixel offsets
# from the entity's centre, already rotated, with v pointing down (image rows). Shapes
# are implicit functions evaluated on the whole grid at once: radius functions in polar
# coordinates for stars and spikes, distances to segments for limbs and branches.

def _polar(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.sqrt(u * u + v * v), np.arctan2(v, u)  # sqrt: several times faster than hypot


# Powers by repeated squaring: numpy's general float power is ~50x slower than a multiply.
def _pow4(x: np.ndarray) -> np.ndarray:
    x = x * x
    return x * x


def _pow8(x: np.ndarray) -> np.ndarray:
    return _pow4(x * x)


def _near_segment(u: np.ndarray, v: np.ndarray, a: tuple[float, float],
                  b: tuple[float, float], half_width: float) -> np.ndarray:
    """Pixels within `half_width` of the segment a-b: a capsule."""
    au, av, bu, bv = float(a[0]), float(a[1]), float(b[0]), float(b[1])  # keep float32 grids
    du, dv = bu - au, bv - av
    t = np.clip(((u - au) * du + (v - av) * dv) / (du * du + dv * dv + 1e-9), 0.0, 1.0)
    return (u - au - t * du) ** 2 + (v - av - t * dv) ** 2 < float(half_width) ** 2


def _starfish(u, v, r, rng):
    rho, phi = _polar(u, v)
    arms = (1.0 + np.cos(5.0 * phi)) / 2.0  # peaks every 72 degrees
    arms *= np.sqrt(arms)  # ** 1.5: thinner arms
    return rho < r * (rng.uniform(0.28, 0.38) + 0.65 * arms)


def _pebble(u, v, r, rng):
    return (u / r) ** 2 + (v / (rng.uniform(0.5, 0.85) * r)) ** 2 < 1.0


def _urchin(u, v, r, rng):
    rho, phi = _polar(u, v)
    spikes = _pow4((1.0 + np.cos(int(rng.integers(16, 25)) * phi)) / 2.0)  # many short spikes
    return rho < r * (0.68 + 0.3 * spikes)


def _kelp(u, v, r, rng):
    length = rng.uniform(1.1, 1.4) * r
    centre = rng.uniform(0.1, 0.25) * r * np.sin(rng.uniform(1.5, 3.0) * np.pi / length * v
                                                 + rng.uniform(0, 2 * np.pi))
    half_width = rng.uniform(0.14, 0.22) * r * (1.0 - 0.6 * (v / length) ** 2)  # tapered ends
    return (np.abs(v) < length) & (np.abs(u - centre) < half_width)


def _crab(u, v, r, rng):
    body = (u / (0.55 * r)) ** 2 + ((v - 0.1 * r) / (rng.uniform(0.33, 0.42) * r)) ** 2 < 1.0
    side = np.abs(u)  # crabs are mirror symmetric: draw one side, get both
    claw = (side - 0.55 * r) ** 2 + (v + 0.5 * r) ** 2 < (0.17 * r) ** 2
    arm = _near_segment(side, v, (0.3 * r, -0.1 * r), (0.5 * r, -0.45 * r), 0.07 * r)
    legs = np.zeros_like(body)
    for k in range(3):
        legs |= _near_segment(side, v, (0.35 * r, (0.05 + 0.13 * k) * r),
                              (0.9 * r, (0.2 + 0.18 * k) * r), 0.05 * r)
    return body | claw | arm | legs


def _fish(u, v, r, rng):
    body = ((u - 0.15 * r) / (0.65 * r)) ** 2 + (v / (rng.uniform(0.28, 0.4) * r)) ** 2 < 1.0
    tail = (u < -0.4 * r) & (u > -0.95 * r) & (np.abs(v) < 0.8 * (-0.4 * r - u) + 0.02 * r)
    return body | tail


def _coral(u, v, r, rng):
    half_width = rng.uniform(0.09, 0.14) * r
    segments = [((0.0, 0.85 * r), (0.0, 0.05 * r))]  # the trunk; branches grow upwards
    for _ in range(rng.integers(3, 6)):
        (au, av), (bu, bv) = segments[rng.integers(len(segments))]
        t = rng.uniform(0.3, 1.0)
        start = (au + t * (bu - au), av + t * (bv - av))
        angle = -np.pi / 2 + rng.uniform(-1.1, 1.1)
        length = rng.uniform(0.35, 0.6) * r
        end = np.array([start[0] + length * np.cos(angle), start[1] + length * np.sin(angle)])
        end *= min(1.0, 0.88 * r / (np.hypot(*end) + 1e-9))  # stay inside the extent
        segments.append((start, (float(end[0]), float(end[1]))))
    inside = np.zeros(u.shape, dtype=bool)
    for a, b in segments:
        inside |= _near_segment(u, v, a, b, half_width)
    return inside


def _anemone(u, v, r, rng):
    rho, phi = _polar(u, v)
    # Few long tentacles that sway: the angle is bent a little with the distance out.
    sway = rng.uniform(0.1, 0.25) * np.sin(6.0 * rho / r)
    tentacles = _pow8((1.0 + np.cos(int(rng.integers(7, 11)) * (phi + sway))) / 2.0)
    return rho < r * (0.42 + 0.58 * tentacles)


def _shell(u, v, r, rng):
    hinge = 0.5 * r  # a scallop: ribs fan out upwards from a hinge below the centre
    rho = np.sqrt(u * u + (v - hinge) ** 2)
    angle = np.arctan2(u, hinge - v)  # 0 = straight up from the hinge
    rim = 1.2 * r * (0.9 + 0.1 * np.abs(np.cos(int(rng.integers(6, 10)) * angle)))
    fan = (np.abs(angle) < 0.95) & (rho < rim)
    ears = (np.abs(u) < 0.3 * r) & (np.abs(v - hinge) < 0.12 * r)
    return fan | ears


def _jellyfish(u, v, r, rng):
    top = -0.25 * r
    dome = (v < top + 0.08 * r) & ((u / (0.7 * r)) ** 2 + ((v - top) / (0.6 * r)) ** 2 < 1.0)
    spacing = 1.1 * r / int(rng.integers(4, 7))
    wavy = u - 0.06 * r * np.sin(8.0 * v / r + rng.uniform(0, 2 * np.pi))
    offset = np.mod(wavy + 0.55 * r, spacing) - spacing / 2  # distance to nearest tentacle
    tentacles = ((v > top) & (v < 0.95 * r) & (np.abs(wavy) < 0.55 * r)
                 & (np.abs(offset) < 0.06 * r))
    return dome | tentacles


def _seahorse(u, v, r, rng):
    head = (u / (0.2 * r)) ** 2 + ((v + 0.62 * r) / (0.17 * r)) ** 2 < 1.0
    snout = _near_segment(u, v, (0.1 * r, -0.62 * r), (0.5 * r, -0.55 * r), 0.06 * r)
    belly_width = rng.uniform(0.2, 0.26) * r
    belly = ((u - 0.02 * r) / belly_width) ** 2 + ((v + 0.1 * r) / (0.45 * r)) ** 2 < 1.0
    tu, tv = u + 0.15 * r, v - 0.5 * r  # the tail curls around this point
    tail_radius = np.sqrt(tu * tu + tv * tv)
    tail = (tail_radius > 0.1 * r) & (tail_radius < 0.26 * r) & ~((tu < 0) & (tv < 0))
    return head | snout | belly | tail


def _sponge(u, v, r, rng):
    rho, phi = _polar(u, v)
    radius = np.full(phi.shape, 0.8 * r, dtype=np.float32)
    for k in (2, 3, 4):  # a lumpy outline: a few low angular frequencies
        radius += rng.uniform(0.0, 0.08) * r * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    inside = rho < radius
    for _ in range(rng.integers(3, 7)):  # the holes (oscula) make masks with holes
        hole_r = rng.uniform(0.08, 0.14) * r
        hu, hv = (float(c) * r for c in rng.uniform(-0.45, 0.45, size=2))
        inside &= (u - hu) ** 2 + (v - hv) ** 2 >= hole_r ** 2
    return inside


@dataclass(frozen=True)
class _ShapeSpec:
    draw: Callable[..., np.ndarray]
    extent: float  # the shape fits in a disc of radius extent * r
    upright: bool = False  # hanging/standing things are only tilted a little


_SHAPES: dict[str, _ShapeSpec] = {
    "starfish": _ShapeSpec(_starfish, 1.05),
    "pebble": _ShapeSpec(_pebble, 1.02),
    "urchin": _ShapeSpec(_urchin, 1.0),
    "kelp": _ShapeSpec(_kelp, 1.5, upright=True),
    "crab": _ShapeSpec(_crab, 1.1),
    "fish": _ShapeSpec(_fish, 1.1),
    "coral": _ShapeSpec(_coral, 1.05, upright=True),
    "anemone": _ShapeSpec(_anemone, 1.02),
    "shell": _ShapeSpec(_shell, 1.05),
    "jellyfish": _ShapeSpec(_jellyfish, 1.1, upright=True),
    "seahorse": _ShapeSpec(_seahorse, 0.9, upright=True),
    "sponge": _ShapeSpec(_sponge, 1.05),
}


# ---------------------------------------------------------------------------------------

@dataclass(eq=False)
class Scene:
    """One ShapeScenes image with its annotations.

    image: size x size x 3 uint8 RGB. instance_masks: K x H x W bool, the *visible* part
    of each entity. instance_classes: K class ids (indices into VOCABULARY). semantic:
    H x W int16 class id per pixel (stuff ids for the background). index: the scene's
    index in its dataset.
    """

    image: np.ndarray
    instance_masks: np.ndarray
    instance_classes: np.ndarray
    semantic: np.ndarray
    index: int

    @property
    def class_names(self) -> list[str]:
        """Class name of each instance, in instance order."""
        return [VOCABULARY[c] for c in self.instance_classes]

    def masks_of(self, class_name: str) -> np.ndarray:
        """The instance masks (k x H x W bool, k may be 0) of one class."""
        class_id = ShapeScenes.class_id(class_name)
        return self.instance_masks[self.instance_classes == class_id]


@dataclass(frozen=True)
class _Entity:
    class_id: int
    rows: slice
    cols: slice
    shape: np.ndarray  # bool, the entity's footprint inside its bounding box
    shading: np.ndarray  # float32, darker towards the rim, for a little depth


class ShapeScenes(Sequence):
    """A seeded synthetic dataset of multi-entity scenes (numpy only, no torch).

    Arguments:
      split: "train" | "val" | "test"; splits never share a scene.
      classes: which entity classes appear: "base" | "novel" | "all".
      n: number of scenes.
      seed: scene i is a function of (seed, split, i) only.
      size: side of the square images in pixels.
      style: None, or "ocean" for a domain shift (dark, blue-green cast, low
        contrast, uneven light, noise), the analogue of CPC-SAM's OceanCOCO.
      multi_instance: share of scenes drawn with 2-4 copies of one class (the several
        instances of one name that OpenWorldSAM's tie-breakers are for); default 0.3.
    """

    def __init__(self, split: str = "train", classes: str = "base", n: int = 1000,
                 seed: int = 0, size: int = 256, style: str | None = None,
                 multi_instance: float = MULTI_INSTANCE_PROBABILITY) -> None:
        if split not in SPLITS:
            raise bad_argument("split", f"one of {SPLITS}", split)
        if classes not in CLASS_SETS:
            raise bad_argument("classes", f"one of {CLASS_SETS}", classes)
        if style not in STYLES:
            raise bad_argument("style", f"one of {STYLES}", style)
        if not _is_int(n) or n < 1:
            raise bad_argument("n", "a positive int", n)
        if not _is_int(seed) or seed < 0:
            raise bad_argument("seed", "a non-negative int", seed)
        if not _is_int(size) or not 32 <= size <= 2048:
            raise bad_argument("size", "an int in [32, 2048]", size)
        if isinstance(multi_instance, bool) or not isinstance(multi_instance, (int, float)) \
                or not 0.0 <= multi_instance <= 1.0:
            raise bad_argument("multi_instance", "a probability in [0, 1]", multi_instance)
        self.multi_instance = float(multi_instance)
        self.split, self.classes, self.n = split, classes, int(n)
        self.seed, self.size, self.style = int(seed), int(size), style
        names = {"base": BASE_CLASSES, "novel": NOVEL_CLASSES, "all": ENTITY_CLASSES}[classes]
        self.class_names: tuple[str, ...] = names
        self._class_ids = np.array([VOCABULARY.index(name) for name in names])
        self._split_id = SPLITS.index(split)
        # Pixel-centre coordinates, reused by every scene.
        self._axis = np.arange(size, dtype=np.float32)

    @staticmethod
    def class_id(name: str) -> int:
        """The id of a class name: its index in VOCABULARY."""
        if name not in VOCABULARY:
            raise bad_argument("name", f"a class name in {VOCABULARY}", name)
        return VOCABULARY.index(name)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Scene:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]  # type: ignore[return-value]
        if not _is_int(index):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for ShapeScenes of length {self.n}")
        index = int(index) % self.n
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self._split_id, index]))
        return self._draw_scene(rng, index)

    def __repr__(self) -> str:
        extra = "" if self.multi_instance == MULTI_INSTANCE_PROBABILITY else f", multi_instance={self.multi_instance}"
        return (f"ShapeScenes(split={self.split!r}, classes={self.classes!r}, n={self.n}, "
                f"seed={self.seed}, size={self.size}, style={self.style!r}{extra})")

    # -- drawing ---------------------------------------------------------------------

    def _draw_scene(self, rng: np.random.Generator, index: int) -> Scene:
        size = self.size
        image, semantic = self._draw_background(rng)

        entities = [self._draw_entity(class_id, rng) for class_id in self._pick_classes(rng)]
        min_area = MIN_VISIBLE_FRACTION * size * size
        while True:
            owner, visible = self._owner_map(entities)
            if visible.max(initial=0) >= min_area:
                break
            # Nothing big enough is visible (rare): add one more on top, deterministically.
            entities.append(self._draw_entity(int(rng.choice(self._class_ids)), rng))
        if (visible < min_area).any():
            # Drop the hidden ones and redo the map: removing an entity only uncovers
            # others, so every instance that is kept stays above the threshold.
            entities = [e for e, area in zip(entities, visible) if area >= min_area]
            owner, visible = self._owner_map(entities)

        for entity in entities:  # painted in order, so later entities cover earlier ones
            texture = class_texture(VOCABULARY[entity.class_id], size)
            patch = _crop(texture, entity.shape.shape[0], entity.shape.shape[1], rng)
            light = np.repeat((rng.uniform(0.85, 1.15) * entity.shading)[..., None], 3, axis=2)
            painted = np.minimum(patch * light, 255.0).astype(np.uint8)
            # Full 3-channel arrays: numpy is many times slower broadcasting a last axis of 3.
            np.copyto(image[entity.rows, entity.cols], painted,
                      where=np.repeat(entity.shape[..., None], 3, axis=2))
            semantic[entity.rows, entity.cols][entity.shape] = entity.class_id

        class_ids = np.array([e.class_id for e in entities], dtype=np.int64)
        masks = owner[None] == np.arange(len(entities), dtype=owner.dtype)[:, None, None]

        if self.style == "ocean":
            image = _ocean_style(image, rng)
        return Scene(image=image, instance_masks=masks, instance_classes=class_ids,
                     semantic=semantic, index=index)

    def paint_decoy(self, scene: Scene, texture_class: str, rng: np.random.Generator,
                    tries: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """A copy of `scene.image` with a *decoy* painted on top: the shape of another entity class
        in the texture of `texture_class`, so appearance alone cannot tell it from that class.

        The decoy goes where it covers the least of `texture_class`'s instances among `tries`
        seeded draws. Returns (image, decoy_mask); the decoy belongs to no class, so a caller's
        true mask of `texture_class` is its mask & ~decoy_mask (the decoy may hide a part of it).
        """
        if texture_class not in ENTITY_CLASSES:
            raise bad_argument("texture_class", f"an entity class in {ENTITY_CLASSES}", texture_class)
        if scene.image.shape[:2] != (self.size, self.size):
            raise bad_argument("scene", f"a scene of this data set's size {self.size}", scene.image.shape)
        if self.style is not None:  # the decoy would be painted after the style, in plain colours
            raise bad_argument("style", "the plain style (None) for decoys", self.style)
        others = [name for name in ENTITY_CLASSES if name != texture_class]
        shape_class = others[int(rng.integers(len(others)))]
        truth = scene.masks_of(texture_class).any(axis=0)
        best, best_cover = None, None
        for _ in range(tries):
            entity = self._draw_entity(VOCABULARY.index(shape_class), rng)
            cover = np.count_nonzero(truth[entity.rows, entity.cols] & entity.shape)
            if best is None or cover < best_cover:
                best, best_cover = entity, cover
        image = scene.image.copy()
        patch = _crop(class_texture(texture_class, self.size), best.shape.shape[0], best.shape.shape[1], rng)
        light = np.repeat(best.shading[..., None], 3, axis=2)
        np.copyto(image[best.rows, best.cols], np.minimum(patch * light, 255.0).astype(np.uint8),
                  where=np.repeat(best.shape[..., None], 3, axis=2))
        decoy = np.zeros(scene.image.shape[:2], dtype=bool)
        decoy[best.rows, best.cols] = best.shape
        return image, decoy

    def _draw_background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """1-3 stuff regions separated by wavy boundaries; returns (image, semantic)."""
        size = self.size
        n_stuff = int(rng.integers(1, 4))
        stuff = rng.choice(len(STUFF_CLASSES), size=n_stuff, replace=False)
        region = np.zeros((size, size), dtype=np.int8)
        if n_stuff > 1:
            cuts = np.sort(rng.uniform(0.2, 0.8, size=n_stuff - 1)) * size
            amplitude = rng.uniform(0.02, 0.08, size=n_stuff - 1) * size
            frequency = rng.uniform(1.0, 3.0, size=n_stuff - 1) * 2 * np.pi / size
            phase = rng.uniform(0, 2 * np.pi, size=n_stuff - 1)
            stacked = rng.random() < 0.5  # layers on top of each other, or side by side
            for k in range(n_stuff - 1):
                boundary = cuts[k] + amplitude[k] * np.sin(frequency[k] * self._axis + phase[k])
                if stacked:  # boundary[x] is a row
                    beyond = self._axis[:, None] >= boundary[None, :]
                else:  # boundary[y] is a column
                    beyond = self._axis[None, :] >= boundary[:, None]
                region += beyond  # a pixel's region: how many boundaries lie before it
        stuff_ids = np.array([VOCABULARY.index(STUFF_CLASSES[s]) for s in stuff], dtype=np.int16)
        semantic = stuff_ids[region]
        image = _crop(class_texture(STUFF_CLASSES[stuff[0]], size), size, size, rng).copy()
        for k in range(1, n_stuff):
            patch = _crop(class_texture(STUFF_CLASSES[stuff[k]], size), size, size, rng)
            np.copyto(image, patch, where=np.repeat((region == k)[..., None], 3, axis=2))
        return image, semantic

    def _pick_classes(self, rng: np.random.Generator) -> list[int]:
        pool = self._class_ids
        if rng.random() < self.multi_instance:
            copies = int(rng.integers(2, 5))
            others = int(rng.integers(0, MAX_ENTITIES - copies + 1))
            picked = [int(rng.choice(pool))] * copies + [int(c) for c in rng.choice(pool, others)]
            rng.shuffle(picked)
            return picked
        count = int(rng.integers(1, MAX_ENTITIES + 1))
        distinct = min(count, len(pool))  # distinct classes first, repeats only if needed
        picked = list(rng.choice(pool, size=distinct, replace=False))
        picked += list(rng.choice(pool, size=count - distinct))
        return [int(c) for c in picked]

    def _draw_entity(self, class_id: int, rng: np.random.Generator) -> _Entity:
        size = self.size
        spec = _SHAPES[VOCABULARY[class_id]]
        r = rng.uniform(0.10, 0.22) * size  # a python float: keeps the grids float32
        cx, cy = (float(c) * size for c in rng.uniform(0.08, 0.92, size=2))
        angle = rng.uniform(-0.4, 0.4) if spec.upright else rng.uniform(0, 2 * np.pi)
        reach = spec.extent * r + 1.0
        rows = slice(max(0, int(cy - reach)), min(size, int(np.ceil(cy + reach)) + 1))
        cols = slice(max(0, int(cx - reach)), min(size, int(np.ceil(cx + reach)) + 1))
        dy = self._axis[rows, None] - cy
        dx = self._axis[None, cols] - cx
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        u = dx * cos + dy * sin  # rotate the grid, not the shape
        v = dy * cos - dx * sin
        shape = spec.draw(u, v, np.float32(r), rng)
        shading = 1.0 - 0.3 * (u * u + v * v) / np.float32(reach * reach)
        return _Entity(class_id, rows, cols, shape, shading)

    def _owner_map(self, entities: list[_Entity]) -> tuple[np.ndarray, np.ndarray]:
        """Index of the entity seen at each pixel (-1: background; later ones on top),
        and the visible area of each entity."""
        owner = np.full((self.size, self.size), -1, dtype=np.int8)
        for k, entity in enumerate(entities):
            owner[entity.rows, entity.cols][entity.shape] = k
        visible = np.array([np.count_nonzero(owner[e.rows, e.cols] == k)
                            for k, e in enumerate(entities)], dtype=np.int64)
        return owner, visible


def _sensor_noise(size: int) -> np.ndarray:
    """A fixed 3 x 2size x 2size field of noise in 0-255 units. Scenes take random windows
    of it, which is much cheaper than sampling fresh noise for every scene."""
    if size not in _NOISE:
        noise_rng = np.random.default_rng(20240611)
        noise = noise_rng.standard_normal((3, 2 * size, 2 * size), dtype=np.float32)
        _NOISE[size] = noise * np.float32(0.015 * 255)
    return _NOISE[size]


def _ocean_style(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Deep-sea look: low contrast, dark, blue-green cast, uneven light, sensor noise."""
    size = image.shape[0]
    f32 = np.float32  # keep every temporary in float32: these run on every pixel
    axis = np.linspace(-1.0, 1.0, size, dtype=f32)
    y, x = axis[:, None], axis[None, :]
    direction = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.2, 0.4)
    gradient = f32(strength * np.cos(direction)) * x + f32(strength * np.sin(direction)) * y
    gradient += f32(1.0)
    spot_x, spot_y = rng.uniform(-0.5, 0.5, size=2)
    vignette = (x - f32(spot_x)) ** 2 + (y - f32(spot_y)) ** 2
    vignette *= f32(-rng.uniform(0.2, 0.4))
    vignette += f32(1.0)
    light = np.clip(gradient * vignette, f32(0.15), f32(1.3))

    # Work on contiguous colour planes: numpy is slow at broadcasting over a last axis of 3.
    planes = np.empty((3, size, size), dtype=f32)
    for c in range(3):
        planes[c] = image[..., c]
    mean = planes[:, ::4, ::4].mean(axis=(1, 2))  # a subsample is plenty for a mean
    contrast = rng.uniform(0.5, 0.65)  # pulls every pixel towards the mean
    cast = np.array([0.35, 0.75, 0.85]) * rng.uniform(0.55, 0.7)
    veil = np.array([0.0, 0.05, 0.08]) * 255  # the blue-green haze of the water
    noise = _sensor_noise(size)
    top, left = rng.integers(0, size + 1, size=2)
    for c, plane in enumerate(planes):
        # (mean + contrast (image - mean)) * cast * light + veil + noise, in place;
        # +0.5 makes the final cast to uint8 round.
        plane *= f32(contrast * cast[c])
        plane += f32((1 - contrast) * mean[c] * cast[c])
        plane *= light
        plane += f32(veil[c] + 0.5)
        plane += noise[c, top:top + size, left:left + size]
    np.clip(planes, f32(0.0), f32(255.0), out=planes)
    return np.stack(list(planes.astype(np.uint8)), axis=-1)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def scenes_per_second(n: int = 200, size: int = 256, style: str | None = None) -> float:
    """Measured generation speed (scenes/s) on this machine, after a warm-up scene."""
    dataset = ShapeScenes(split="train", classes="all", n=n, size=size, style=style)
    for name in VOCABULARY:  # loading the photos once is not what we time
        class_texture(name, size)
    dataset[0]
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - start)
