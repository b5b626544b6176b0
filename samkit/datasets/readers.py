"""What every reader of a real segmentation data set shares: Sample, bad-data policy, decoding.

A reader (`FolderPairs`, `CocoInstances`, `CocoPanoptic`) is a `Sequence` of `Sample`s with
two more attributes:

  vocabulary: tuple of class names; a class id is an index into it, and id 0 is always
    "background" (so `semantic == 0` is unlabelled pixels, and ids 1.. are the data set's
    classes in its own order: COCO category-id order, CelebAMask-HQ's official part order).
  skipped: (path, reason) for each sample left out under `skip_bad=True`.

Bad data (a missing or unpaired file, bytes PIL cannot decode, a mask whose size does not
match its image) raises `BadDataError`, a ValueError whose message starts with the path.
When that is found depends on two flags every reader takes:

  skip_bad=False, validate=False (default): construction checks what is cheap (files exist,
    images and masks pair up) and raises on the first problem; files are decoded lazily in
    `__getitem__`, which raises `BadDataError` for a file that does not decode.
  skip_bad=True (validate defaults to True): construction also decodes every sample once
    (a full pass over the data, as long as an epoch of reading it) and leaves out every bad one,
    so that each index of the reader loads. The leftovers are listed in `skipped` and one
    `BadDataWarning` gives their count and the first few paths.
  skip_bad=True, validate=False: only the cheap problems are skipped; a file that fails to
    decode still raises `BadDataError` when its sample is read.
  skip_bad=False, validate=True: fail fast, at construction, on the first bad sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from samkit.errors import bad_argument

BACKGROUND = "background"  # the name of class id 0 in every reader's vocabulary
SHOWN_IN_WARNING = 3  # bad paths named in the skip warning; the rest are in `skipped`


class BadDataError(ValueError):
    """A file of a data set is missing, unpaired, undecodable or the wrong size."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # so that it crosses process boundaries (DataLoader workers) intact
        return type(self), (self.path, self.reason)


class BadDataWarning(UserWarning):
    """Bad samples were skipped (`skip_bad=True`); the reader's `skipped` lists them."""


@dataclass(eq=False)
class Sample:
    """One image of a real data set with its annotations (the fields of ShapeScenes' Scene).

    image: H x W x 3 uint8 RGB. instance_masks: K x H x W bool, one per object (things only;
    stuff is in `semantic` alone). instance_classes: K class ids (indices into `vocabulary`).
    semantic: H x W int16 class id per pixel, 0 = background/unlabelled. index: the sample's
    index in its reader. class_names: the class name of each instance. vocabulary: the
    reader's class names. path: the image file.
    """

    image: np.ndarray
    instance_masks: np.ndarray
    instance_classes: np.ndarray
    semantic: np.ndarray
    index: int
    class_names: list[str]
    vocabulary: tuple[str, ...]
    path: str

    def class_id(self, class_name: str) -> int:
        """The id of a class name: its index in `vocabulary`."""
        return class_id_in(self.vocabulary, class_name)

    def masks_of(self, class_name: str) -> np.ndarray:
        """The instance masks (k x H x W bool, k may be 0) of one class."""
        return self.instance_masks[self.instance_classes == self.class_id(class_name)]

    def mask_of(self, class_name: str) -> np.ndarray:
        """One H x W bool mask of a class: the union of its instances, or for a class with
        no instances here (stuff, a crowd-only class) its pixels in `semantic`."""
        masks = self.masks_of(class_name)
        if len(masks):
            return masks.any(axis=0)
        return self.semantic == self.class_id(class_name)


# ---------------------------------------------------------------------------------------
# Decoding. PIL raises OSError (UnidentifiedImageError, "image file is truncated"),
# SyntaxError (broken PNG chunks) or ValueError for bad bytes; all become BadDataError.
# (Unless some other code has set PIL.ImageFile.LOAD_TRUNCATED_IMAGES, which makes PIL
# pad truncated files with grey instead of failing.)

def read_image(path: str | Path, mode: str) -> Image.Image:
    """Fully decode an image file in PIL `mode` ("RGB", "L"); BadDataError if it cannot be."""
    try:
        with Image.open(path) as image:
            image.load()  # open() reads the header only; a truncated body fails here
            return image.convert(mode)
    except FileNotFoundError as error:
        raise BadDataError(path, "file is missing") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadDataError(path, f"cannot be read or decoded ({type(error).__name__}: "
                           f"{error})") from error


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as H x W x 3 uint8."""
    return np.asarray(read_image(path, "RGB"))


def read_binary_mask(path: str | Path, size: tuple[int, int] | None = None,
                     resize: bool = False) -> np.ndarray:
    """A mask file as H x W bool: grey value > 127 (JPEG masks are never exactly 0/255).

    size: the (height, width) it must have. With `resize=True` a mask of the same aspect ratio
    is resized to it (nearest neighbour) instead; other sizes are bad data.
    """
    mask = read_image(path, "L")
    if size is not None and (mask.height, mask.width) != tuple(size):
        same_aspect = mask.width * size[0] == mask.height * size[1]
        if not (resize and same_aspect):
            raise BadDataError(path, f"mask is {mask.height} x {mask.width} but its image is "
                               f"{size[0]} x {size[1]}")
        mask = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(mask) > 127


def make_sample(image: np.ndarray, masks: list[np.ndarray], classes: list[int],
                semantic: np.ndarray, index: int, vocabulary: tuple[str, ...],
                path: str | Path) -> Sample:
    """A Sample from decoded parts: lists of H x W masks and their class ids (maybe empty)."""
    height, width = image.shape[:2]
    instance_masks = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return Sample(image=image, instance_masks=instance_masks,
                  instance_classes=np.array(classes, dtype=np.int64), semantic=semantic,
                  index=index, class_names=[vocabulary[c] for c in classes],
                  vocabulary=vocabulary, path=str(path))


def class_id_in(vocabulary: tuple[str, ...], class_name: str) -> int:
    """The id of a class name: its index in `vocabulary`; ValueError naming the choices if absent."""
    if class_name not in vocabulary:
        shown = ", ".join(vocabulary[:8]) + (", ..." if len(vocabulary) > 8 else "")
        raise bad_argument("class_name", f"one of the {len(vocabulary)} class names of this "
                           f"data set ({shown})", class_name)
    return vocabulary.index(class_name)


# ---------------------------------------------------------------------------------------

class Reader(Sequence):
    """The shared part of every reader: indexing, the skip/validate policy, class look-ups.

    A subclass finds its samples (one record each, any type) and the cheap problems, calls
    `_settle`, and implements `_load(record, index) -> Sample` and `_classes(record)`.
    """

    vocabulary: tuple[str, ...]
    skipped: list[tuple[str, str]]
    _records: list[Any]

    def _settle(self, records: list[Any], bad: list[tuple[str, str]], skip_bad: bool,
                validate: bool | None) -> None:
        """Apply the bad-data policy to the records found (see the module docstring)."""
        if bad and not skip_bad:
            path, reason = bad[0]
            more = f" (and {len(bad) - 1} more bad samples)" if len(bad) > 1 else ""
            raise BadDataError(path, f"{reason}{more}; pass skip_bad=True to skip bad samples")
        if validate is None:
            validate = skip_bad
        bad = list(bad)
        if validate:
            kept = []
            for record in records:
                try:
                    self._load(record, len(kept))
                except BadDataError as error:
                    if not skip_bad:
                        raise
                    bad.append((error.path, error.reason))
                else:
                    kept.append(record)
            records = kept
        self._records, self.skipped = records, bad
        if bad:
            shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:SHOWN_IN_WARNING])
            hidden = len(bad) - SHOWN_IN_WARNING
            rest = f"; and {hidden} more" if hidden > 0 else ""
            warnings.warn(f"{type(self).__name__}: skipped {len(bad)} bad sample(s), kept "
                          f"{len(records)}: {shown}{rest}. See .skipped for the full list.",
                          BadDataWarning, stacklevel=3)

    def _load(self, record: Any, index: int) -> Sample:
        raise NotImplementedError

    def _classes(self, record: Any) -> frozenset[str]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise self._out_of_range(index)
        index = int(index) % len(self)
        return self._load(self._records[index], index)

    def class_id(self, class_name: str) -> int:
        """The id of a class name: its index in `vocabulary`."""
        return class_id_in(self.vocabulary, class_name)

    def class_names_of(self, index: int) -> frozenset[str]:
        """The classes annotated in sample `index`, from the annotations alone (no image is
        decoded), so that few-shot episodes can be planned over a whole data set."""
        if not -len(self) <= index < len(self):
            raise self._out_of_range(index)
        return self._classes(self._records[index])

    def _out_of_range(self, index: int) -> IndexError:
        return IndexError(f"index {index} out of range for {type(self).__name__} "
                          f"of length {len(self)}")
