"""Images with semantic label maps: the Cityscapes and ADE20K folder layouts, and any data set
seen as (image, label map) pairs over its class names (what semantic segmentation trains on)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from samkit.datasets.readers import BACKGROUND, Reader, make_sample, read_image, read_rgb
from samkit.errors import bad_argument
from samkit.metrics import class_iou, confusion_matrix

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")  # train ids 0-18
CITYSCAPES_STUFF = CITYSCAPES_CLASSES[:11]
SEMANTIC_LAYOUTS = ("cityscapes", "ade20k")


class SemanticFolder(Reader):
    """Images with semantic label maps in the Cityscapes or ADE20K (SceneParsing) layout.

    cityscapes: root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png with
      root/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png (made by cityscapesscripts'
      createTrainIdLabelImgs; train id 255 is unlabelled). split: train | val.
    ade20k: root/images/<split>/<name>.jpg with root/annotations/<split>/<name>.png (0 = other,
      unlabelled; 1-150 the classes named in root/objectInfo150.txt). split: training | validation.
    As every reader: vocabulary[0] is "background" (unlabelled) and `semantic` holds vocabulary ids.
    """

    def __init__(self, root: str | Path, layout: str = "cityscapes", split: str = "train",
                 skip_bad: bool = False, validate: bool | None = None) -> None:
        if layout not in SEMANTIC_LAYOUTS:
            raise bad_argument("layout", f"one of {SEMANTIC_LAYOUTS}", layout)
        self.root, self.layout, self.split = Path(root), layout, split
        if layout == "cityscapes":
            self.vocabulary, self.stuff_classes = (BACKGROUND, *CITYSCAPES_CLASSES), CITYSCAPES_STUFF
            images = sorted((self.root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
            pairs = [(p, self.root / "gtFine" / split / p.parent.name /
                      p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")) for p in images]
        else:
            self.vocabulary, self.stuff_classes = (BACKGROUND, *self._ade_names()), ()
            images = sorted((self.root / "images" / split).glob("*.jpg"))
            pairs = [(p, self.root / "annotations" / split / f"{p.stem}.png") for p in images]
        if not pairs:
            raise bad_argument("root", f"a {layout} folder with {split} images", str(self.root))
        bad = [(str(image), f"image has no label map {label.name}") for image, label in pairs if not label.is_file()]
        self._settle([pair for pair in pairs if pair[1].is_file()], bad, skip_bad, validate)

    def _ade_names(self) -> tuple[str, ...]:
        table = self.root / "objectInfo150.txt"  # Idx, Ratio, Train, Val, Name (tab-separated)
        if not table.is_file():
            raise bad_argument("root", "an ADEChallengeData2016 folder with objectInfo150.txt", str(self.root))
        rows = [line.split("\t") for line in table.read_text().splitlines()[1:] if line.strip()]
        return tuple(row[-1].split(",")[0].strip() for row in rows)  # "building, edifice" -> "building"

    def label_map(self, index: int) -> np.ndarray:
        """Sample `index`'s semantic map (vocabulary ids, 0 unlabelled) without decoding its image."""
        return self._semantic(self._records[index][1])

    def _semantic(self, path: Path) -> np.ndarray:
        raw = np.asarray(read_image(path, "L"), dtype=np.int16)
        if self.layout == "cityscapes":  # train ids 0-18 -> 1-19, 255 -> 0
            return np.where(raw == 255, 0, raw + 1).astype(np.int16)
        return raw

    def _load(self, record: tuple[Path, Path], index: int):
        image = read_rgb(record[0])
        return make_sample(image, [], [], self._semantic(record[1]), index, self.vocabulary, record[0])

    def _classes(self, record: tuple[Path, Path]) -> frozenset[str]:
        return frozenset(self.vocabulary[c] for c in np.unique(self._semantic(record[1])) if c)


@dataclass
class SemanticData:
    """A data set seen as (image, label map) pairs over `class_names`, labels -1 where unlabelled."""

    dataset: Sequence
    class_names: tuple[str, ...]
    stuff_classes: tuple[str, ...]
    offset: int  # label = stored id - offset (readers keep id 0 for unlabelled; ShapeScenes has none)
    short_side: int | None = None  # resize so that the shorter side has this many pixels

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) int64 labels in [-1, C)."""
        sample = self.dataset[index]
        return self._resized(sample.image, sample.semantic.astype(np.int64) - self.offset)

    def classes_in(self, index: int) -> set[int]:
        """The classes labelled in sample `index` (decodes only the label map where the reader can)."""
        source = getattr(self.dataset, "label_map", None)
        stored = source(index) if source is not None else self.dataset[index].semantic
        return {int(c) - self.offset for c in np.unique(stored) if int(c) - self.offset >= 0}

    def _resized(self, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.short_side is None or min(image.shape[:2]) == self.short_side:
            return image, labels
        height, width = image.shape[:2]
        scale = self.short_side / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (W, H)
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
        return image, labels.astype(np.int64)


UNLABELLED = -1  # the label of pixels that count for nothing


def class_pixel_counts(data: SemanticData, indices: Sequence[int] | None = None) -> np.ndarray:
    """(C,) labelled pixels of each class over the samples `indices` of `data` (None: all of them)."""
    counts = np.zeros(len(data.class_names), dtype=np.int64)
    for index in range(len(data)) if indices is None else indices:
        labels = data.item(index)[1]
        counts += np.bincount(labels[labels >= 0], minlength=len(data.class_names))
    return counts


def semantic_scores(predict: Callable[[list[np.ndarray]], list[np.ndarray]], data: SemanticData,
                    batch: int = 4) -> tuple[dict[str, float], dict[str, float]]:
    """mIoU of `predict` (images -> (H, W) class maps) over `data`: one confusion matrix over all
    its pixels, at the data's `short_side` resolution when one is set; also over the foreground
    (entity) and background (stuff) classes. Returns (metrics, per-class IoU)."""
    classes = len(data.class_names)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for start in range(0, len(data), batch):
        items = [data.item(i) for i in range(start, min(len(data), start + batch))]
        for predicted, (_, labels) in zip(predict([image for image, _ in items]), items):
            confusion += confusion_matrix(predicted, labels, classes, ignore_index=UNLABELLED)
    iou = class_iou(confusion)
    stuff = np.array([name in data.stuff_classes for name in data.class_names])
    nan_mean = lambda values: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")  # noqa: E731
    metrics = {"miou": nan_mean(iou), "miou_foreground": nan_mean(iou[~stuff]), "miou_background": nan_mean(iou[stuff])}
    return metrics, {name: float(value) for name, value in zip(data.class_names, iou)}
