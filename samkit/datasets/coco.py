"""COCO readers: instance annotations (polygons, RLE) and panoptic annotations (PNG + JSON).

Class ids are contiguous: 1 + the rank of the category id (COCO's 80 thing categories have
ids 1..90 with gaps; here they are 1..80, the numbering COCO-20i folds use), 0 is
background. Crowd annotations (iscrowd=1) are never instances: their pixels get their
class in `semantic` (they are that class, just not separable), beneath the instances.

pycocotools is imported when a CocoInstances is made, so the package works without it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from samkit.datasets.readers import (
    BACKGROUND,
    BadDataError,
    Reader,
    Sample,
    make_sample,
    read_image,
    read_rgb,
)
from samkit.errors import bad_argument


class CocoInstances(Reader):
    """Images with COCO instance annotations (e.g. val2017/ + instances_val2017.json).

    Every image listed in the JSON is a sample, also those with no annotations (K = 0).
    Instance k is the k-th non-crowd annotation of the image in JSON order; `semantic`
    paints crowd regions first, then instances from the largest to the smallest, so that
    where annotations overlap the smaller object stays visible. Annotations whose mask is
    empty (a degenerate polygon) are dropped. An image whose size differs from the JSON's
    height/width, or an annotation that cannot be decoded, is bad data.

    Arguments:
      image_dir: the folder of images (file_name in the JSON is relative to it).
      annotation_json: the instances JSON.
      skip_bad, validate: the bad-data policy of `samkit.datasets.readers`.
    """

    def __init__(self, image_dir: str | Path, annotation_json: str | Path,
                 skip_bad: bool = False, validate: bool | None = None) -> None:
        try:
            from pycocotools.coco import COCO
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("CocoInstances needs pycocotools: pip install pycocotools") from error
        self.image_dir = _folder(image_dir, "image_dir")
        self.annotation_json = Path(annotation_json)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
                self.coco = COCO(str(annotation_json))
        except FileNotFoundError as error:
            raise BadDataError(annotation_json, "file is missing") from error
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
            raise BadDataError(annotation_json, f"is not a COCO annotation file "
                               f"({type(error).__name__}: {error})") from error
        categories = list(self.coco.cats.values())
        self.vocabulary, self._class_of = _vocabulary(categories, annotation_json)
        present = _listing(self.image_dir)
        records, bad = [], []
        for image_id in sorted(self.coco.imgs):
            file_name = self.coco.imgs[image_id]["file_name"]
            path = self.image_dir / file_name
            if _exists(self.image_dir, file_name, present):
                records.append(image_id)
            else:
                bad.append((str(path), "image file is missing (listed in "
                            f"{self.annotation_json.name})"))
        self._settle(records, bad, skip_bad, validate)

    def __repr__(self) -> str:
        return (f"CocoInstances(image_dir={str(self.image_dir)!r}, "
                f"annotation_json={str(self.annotation_json)!r}, n={len(self)})")

    def _load(self, image_id: Any, index: int) -> Sample:
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_rgb(path)
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise BadDataError(path, f"image is {height} x {width} but {self.annotation_json.name} "
                               f"says {info['height']} x {info['width']}")
        semantic = np.zeros((height, width), dtype=np.int16)
        masks, classes = [], []
        for ann in self.coco.imgToAnns[image_id]:
            class_id, mask = self._class_of_ann(ann, path), self._mask(ann, path, (height, width))
            if ann.get("iscrowd", 0):
                semantic[mask] = class_id
            elif mask.any():
                masks.append(mask)
                classes.append(class_id)
        for k in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
            semantic[masks[k]] = classes[k]
        return make_sample(image, masks, classes, semantic, index, self.vocabulary, path)

    def _class_of_ann(self, ann: dict, path: Path) -> int:
        if ann.get("category_id") not in self._class_of:
            raise BadDataError(self.annotation_json, f"annotation {ann.get('id')} of {path.name} "
                               f"has unknown category_id {ann.get('category_id')!r}")
        return self._class_of[ann["category_id"]]

    def _mask(self, ann: dict, path: Path, size: tuple[int, int]) -> np.ndarray:
        """The annotation's mask; polygons, uncompressed and compressed RLE all decode here."""
        what = f"annotation {ann.get('id')} of {path.name}"
        try:
            mask = self.coco.annToMask(ann).astype(bool)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise BadDataError(self.annotation_json, f"{what} has an undecodable segmentation "
                               f"({type(error).__name__}: {error})") from error
        if mask.shape != size:
            raise BadDataError(self.annotation_json, f"{what} is a {mask.shape[0]} x "
                               f"{mask.shape[1]} mask but the image is {size[0]} x {size[1]}")
        return mask

    def _classes(self, image_id: Any) -> frozenset[str]:
        return frozenset(self.vocabulary[self._class_of[ann["category_id"]]]
                         for ann in self.coco.imgToAnns[image_id]
                         if not ann.get("iscrowd", 0) and ann.get("category_id") in self._class_of)


class CocoPanoptic(Reader):
    """Images with COCO panoptic annotations (e.g. val2017/, panoptic_val2017.json and the
    folder of its PNGs).

    A PNG pixel's segment id is R + 256 G + 256^2 B; 0 is unlabelled. Each segment of
    segments_info has a category: things (isthing=1, not crowd) become instances, in
    segments_info order; stuff and crowd things are in `semantic` only. Segments never
    overlap, so `semantic` has no painting order. A PNG of another size than its image, or
    with a segment id that segments_info lacks, is bad data.

    Arguments:
      image_dir: the folder of images. panoptic_json: the panoptic JSON.
      panoptic_png_dir: the folder of the PNGs named in the JSON's annotations.
      skip_bad, validate: the bad-data policy of `samkit.datasets.readers`.
    """

    def __init__(self, image_dir: str | Path, panoptic_json: str | Path,
                 panoptic_png_dir: str | Path, skip_bad: bool = False,
                 validate: bool | None = None) -> None:
        self.image_dir = _folder(image_dir, "image_dir")
        self.png_dir = _folder(panoptic_png_dir, "panoptic_png_dir")
        self.panoptic_json = Path(panoptic_json)
        data = _read_json(self.panoptic_json, ("images", "annotations", "categories"))
        try:
            categories = data["categories"]
            self.vocabulary, self._class_of = _vocabulary(categories, panoptic_json)
            self._is_thing = {self._class_of[c["id"]]: bool(c.get("isthing", 1))
                              for c in categories}
            images = {info["id"]: info for info in data["images"]}
            annotations = {ann["image_id"]: ann for ann in data["annotations"]}
        except (KeyError, TypeError) as error:
            raise BadDataError(panoptic_json, f"is not a COCO panoptic file (missing {error})") \
                from error
        things = self._is_thing.items()
        self.thing_classes = tuple(self.vocabulary[c] for c, thing in things if thing)
        self.stuff_classes = tuple(self.vocabulary[c] for c, thing in things if not thing)
        present_images, present_pngs = _listing(self.image_dir), _listing(self.png_dir)
        records, bad = [], []
        for image_id in sorted(images.keys() | annotations.keys()):
            if image_id not in annotations:
                bad.append((str(self.image_dir / images[image_id]["file_name"]),
                            f"image has no annotation in {self.panoptic_json.name}"))
                continue
            png_name = annotations[image_id]["file_name"]
            png = self.png_dir / png_name
            if image_id not in images:
                bad.append((str(png), f"annotation has no image in {self.panoptic_json.name}"))
                continue
            image_name = images[image_id]["file_name"]
            image = self.image_dir / image_name
            if not _exists(self.image_dir, image_name, present_images):
                bad.append((str(image), "image file is missing"))
            elif not _exists(self.png_dir, png_name, present_pngs):
                bad.append((str(png), "panoptic PNG is missing"))
            else:
                records.append((image, png, annotations[image_id]["segments_info"]))
        self._settle(records, bad, skip_bad, validate)

    def __repr__(self) -> str:
        return (f"CocoPanoptic(image_dir={str(self.image_dir)!r}, "
                f"panoptic_json={str(self.panoptic_json)!r}, n={len(self)})")

    def _load(self, record: tuple[Path, Path, list[dict]], index: int) -> Sample:
        path, png, segments = record
        image = read_rgb(path)
        height, width = image.shape[:2]
        rgb = np.asarray(read_image(png, "RGB"), dtype=np.int32)
        if rgb.shape[:2] != (height, width):
            raise BadDataError(png, f"PNG is {rgb.shape[0]} x {rgb.shape[1]} but its image is "
                               f"{height} x {width}")
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        unknown = sorted(set(np.unique(ids).tolist()) - {s.get("id") for s in segments} - {0})
        if unknown:
            raise BadDataError(png, f"segment ids {unknown[:5]} are not in segments_info")
        semantic = np.zeros((height, width), dtype=np.int16)
        masks, classes = [], []
        for segment in segments:
            if segment.get("category_id") not in self._class_of:
                raise BadDataError(self.panoptic_json, f"segment {segment.get('id')} of {png.name} "
                                   f"has unknown category_id {segment.get('category_id')!r}")
            class_id, mask = self._class_of[segment["category_id"]], ids == segment["id"]
            semantic[mask] = class_id
            if self._is_thing[class_id] and not segment.get("iscrowd", 0) and mask.any():
                masks.append(mask)
                classes.append(class_id)
        return make_sample(image, masks, classes, semantic, index, self.vocabulary, path)

    def _classes(self, record: tuple[Path, Path, list[dict]]) -> frozenset[str]:
        # Stuff counts (its mask comes from `semantic`); crowd-only things do not.
        return frozenset(self.vocabulary[self._class_of[s["category_id"]]] for s in record[2]
                         if s.get("category_id") in self._class_of
                         and not (self._is_thing[self._class_of[s["category_id"]]]
                                  and s.get("iscrowd", 0)))


# ---------------------------------------------------------------------------------------

def _folder(folder: str | Path, name: str) -> Path:
    if not Path(folder).is_dir():
        raise bad_argument(name, "an existing folder", str(folder))
    return Path(folder)


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError as error:
        raise BadDataError(path, "file is missing") from error
    except (OSError, ValueError) as error:
        raise BadDataError(path, f"is not readable JSON ({type(error).__name__}: "
                           f"{error})") from error
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise BadDataError(path, f"lacks the keys {missing}")
    return data


def _vocabulary(categories: list[dict], path: str | Path) -> tuple[tuple[str, ...], dict[Any, int]]:
    """Class names (background first, then categories by id) and category id -> class id."""
    try:
        categories = sorted(categories, key=lambda c: c["id"])
        names = [str(c["name"]) for c in categories]
    except (KeyError, TypeError) as error:
        raise BadDataError(path, f"has a category without id or name ({error!r})") from error
    repeated = sorted({name for name in names if names.count(name) > 1 or name == BACKGROUND})
    if repeated:
        raise BadDataError(path, f"category names {repeated} are repeated or reserved; class names "
                           f"must be unique and not {BACKGROUND!r}")
    return (BACKGROUND, *names), {c["id"]: k for k, c in enumerate(categories, start=1)}


def _listing(folder: Path) -> set[str]:
    """The names in a folder: one listing instead of a stat per image of a large set."""
    return {entry.name for entry in folder.iterdir()}


def _exists(folder: Path, file_name: str, listing: set[str]) -> bool:
    """Whether folder/file_name is there; file names with a sub-folder get a stat of their own."""
    return file_name in listing if "/" not in file_name else (folder / file_name).is_file()
