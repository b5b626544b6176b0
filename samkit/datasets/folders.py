"""FolderPairs: images and masks paired by file name, as Kvasir-SEG and CelebAMask-HQ ship them.

Kvasir-SEG ("kvasir"): root/images/<stem>.jpg and root/masks/<stem>.jpg. A mask is a grey or
RGB JPEG of the image's size; foreground is grey > 127. One class (default "polyp"); the
whole foreground is one instance (Kvasir-SEG's masks do not separate touching polyps).

CelebAMask-HQ ("celebamask"): root/CelebA-HQ-img/<i>.jpg (1024 x 1024) and
root/CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png, one 512 x 512 mask per part
present. Part masks are resized (nearest neighbour) to the image; a mask of another aspect
ratio is bad data. Each part is one instance, its mask as annotated (parts overlap: the skin
mask runs under the nose); `semantic` paints the parts in the official order (PARTS), later
over earlier, exactly as the data set's own label maps are made, so its ids are 1 + the
index in PARTS.

Files with other suffixes than .jpg/.jpeg/.png are not samples and are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samkit.datasets.readers import (
    BACKGROUND,
    Reader,
    Sample,
    make_sample,
    read_binary_mask,
    read_rgb,
)
from samkit.errors import bad_argument

LAYOUTS = ("kvasir", "celebamask")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# CelebAMask-HQ's 18 parts in its official order (g_mask.py): the order of ids and of painting.
PARTS: tuple[str, ...] = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
CELEBA_FOLDER_SIZE = 2000  # images per numbered mask folder
_PART_FILE = re.compile(r"^(\d+)_(\w+)$")


@dataclass(frozen=True)
class _Pair:
    image: Path
    masks: dict[str, Path]  # class name -> mask file


class FolderPairs(Reader):
    """Image/mask pairs in the Kvasir-SEG or CelebAMask-HQ folder layout (see the module).

    Arguments:
      root: the data set's folder.
      layout: "kvasir" | "celebamask".
      class_name: Kvasir's class name (default "polyp"); must be None for "celebamask",
        whose classes are PARTS.
      skip_bad, validate: the bad-data policy of `samkit.datasets.readers`.
    """

    def __init__(self, root: str | Path, layout: str = "kvasir", class_name: str | None = None,
                 skip_bad: bool = False, validate: bool | None = None) -> None:
        if layout not in LAYOUTS:
            raise bad_argument("layout", f"one of {LAYOUTS}", layout)
        self.root, self.layout = Path(root), layout
        if layout == "kvasir":
            if class_name is not None and (not isinstance(class_name, str) or not class_name
                                           or class_name == BACKGROUND):
                raise bad_argument("class_name", f"a non-empty name other than {BACKGROUND!r}",
                                   class_name)
            self.vocabulary = (BACKGROUND, class_name or "polyp")
            records, bad = self._find_kvasir()
        else:
            if class_name is not None:
                raise bad_argument("class_name", "None for layout 'celebamask' (its classes are "
                                   "the 18 part names)", class_name)
            self.vocabulary = (BACKGROUND, *PARTS)
            records, bad = self._find_celebamask()
        self._settle(records, bad, skip_bad, validate)

    def __repr__(self) -> str:
        return f"FolderPairs(root={str(self.root)!r}, layout={self.layout!r}, n={len(self)})"

    # -- finding files (cheap: directory listings, no decoding) --------------------------

    def _folder(self, name: str) -> Path:
        folder = self.root / name
        if not folder.is_dir():
            raise bad_argument("root", f"a {self.layout} data set folder with {name}/ inside",
                               str(self.root))
        return folder

    def _find_kvasir(self) -> tuple[list[_Pair], list[tuple[str, str]]]:
        images, bad = _by_stem(self._folder("images"))
        masks, bad_masks = _by_stem(self._folder("masks"))
        bad += bad_masks
        records = []
        for stem in sorted(images.keys() | masks.keys()):
            if stem not in masks:
                bad.append((str(images[stem]), f"image has no mask masks/{stem}.jpg"))
            elif stem not in images:
                bad.append((str(masks[stem]), f"mask has no image images/{stem}.jpg"))
            else:
                records.append(_Pair(images[stem], {self.vocabulary[1]: masks[stem]}))
        if not records and not bad:
            raise bad_argument("root", "a Kvasir-SEG folder with images in images/", str(self.root))
        return records, bad

    def _find_celebamask(self) -> tuple[list[_Pair], list[tuple[str, str]]]:
        image_files, bad = _by_stem(self._folder("CelebA-HQ-img"))
        images: dict[int, Path] = {}
        for stem, path in image_files.items():
            if stem.isdigit():
                images[int(stem)] = path
            else:
                bad.append((str(path), "image name is not <number>.jpg"))
        parts: dict[int, dict[str, Path]] = {}
        problems: dict[int, tuple[str, str]] = {}  # the first problem of each image id
        for folder in sorted(self._folder("CelebAMask-HQ-mask-anno").iterdir()):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() != ".png":
                    continue
                match = _PART_FILE.match(path.stem)
                if not match:
                    bad.append((str(path), "mask name is not <id:05d>_<part>.png"))
                    continue
                number, part = int(match[1]), match[2]
                if part not in PARTS:
                    problems.setdefault(number, (str(path), f"unknown part {part!r}"))
                elif folder.name != str(number // CELEBA_FOLDER_SIZE):
                    problems.setdefault(number, (str(path), f"mask is in folder {folder.name}/, "
                                                 f"expected {number // CELEBA_FOLDER_SIZE}/"))
                else:
                    parts.setdefault(number, {})[part] = path
        records = []
        for number in sorted(images.keys() | parts.keys() | problems.keys()):
            if number in problems:
                bad.append(problems[number])
            elif number not in parts:
                bad.append((str(images[number]), "image has no part masks in CelebAMask-HQ-mask-"
                            f"anno/{number // CELEBA_FOLDER_SIZE}/"))
            elif number not in images:
                first = parts[number][min(parts[number], key=PARTS.index)]
                bad.append((str(first), f"mask has no image CelebA-HQ-img/{number}.jpg"))
            else:
                records.append(_Pair(images[number], parts[number]))
        if not records and not bad:
            raise bad_argument("root", "a CelebAMask-HQ folder with images in CelebA-HQ-img/",
                               str(self.root))
        return records, bad

    # -- decoding (lazy) ----------------------------------------------------------------

    def _load(self, record: _Pair, index: int) -> Sample:
        image = read_rgb(record.image)
        height, width = image.shape[:2]
        resize = self.layout == "celebamask"  # CelebAMask-HQ's masks are half the image size
        semantic = np.zeros((height, width), dtype=np.int16)
        masks, classes = [], []
        # Vocabulary order is the painting order: later parts cover earlier ones.
        for class_id, name in enumerate(self.vocabulary[1:], start=1):
            if name not in record.masks:
                continue
            mask = read_binary_mask(record.masks[name], (height, width), resize=resize)
            if mask.any():  # an all-background mask annotates nothing
                masks.append(mask)
                classes.append(class_id)
                semantic[mask] = class_id
        return make_sample(image, masks, classes, semantic, index, self.vocabulary, record.image)

    def _classes(self, record: _Pair) -> frozenset[str]:
        return frozenset(record.masks)  # from the file names: an empty mask file still counts


def _by_stem(folder: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """The image files of a folder by stem, and the stems that two files claim."""
    files: dict[str, Path] = {}
    bad = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            bad.append((str(path), f"has the same stem as {files[path.stem].name}"))
        else:
            files[path.stem] = path
    return files, bad
