"""Few-shot segmentation: class folds, base/novel splits and seeded reference/target episodes.

Class ids here are 1-based, as in the PASCAL-5i / COCO-20i papers and their code (PFENet,
HSNet); for the readers of this package that is exactly the vocabulary id (0 is
background), so `[reader.vocabulary[c] for c in fold_classes(80, 0)]` names fold 0's
COCO-20i classes when the reader's categories are COCO's 80.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samkit.datasets.readers import BACKGROUND
from samkit.errors import bad_argument

FOLD_STYLES = ("blocks", "interleaved")


def fold_classes(n_classes: int, fold: int, n_folds: int = 4,
                 style: str | None = None) -> tuple[int, ...]:
    """The novel (test) class ids, 1-based, of one few-shot fold; the other folds' classes
    are its base (training) classes, and the folds partition 1..n_classes.

    style "blocks" (PASCAL-5i, Shaban et al. 2017): fold i is a run of consecutive classes,
      for 20 classes and 4 folds 5i+1 .. 5i+5. When n_folds does not divide n_classes the
      first n_classes % n_folds folds get one class more.
    style "interleaved" (COCO-20i as split by PANet, Wang et al. 2019, and used by PFENet and
      HSNet): fold i = {n_folds * k + i + 1}, every n_folds-th class, for 80 classes
      1+i, 5+i, ..., 77+i. (FWB's COCO-20i, Nguyen & Todorovic 2019, uses "blocks" instead.)
    style None: "interleaved" for 80 classes (COCO-20i), "blocks" otherwise.
    """
    for name, value, least in (("n_classes", n_classes, 1), ("n_folds", n_folds, 1)):
        if not _is_int(value) or value < least:
            raise bad_argument(name, f"an int >= {least}", value)
    if n_folds > n_classes:
        raise bad_argument("n_folds", f"at most n_classes = {n_classes} (every fold needs a class)",
                           n_folds)
    if not _is_int(fold) or not 0 <= fold < n_folds:
        raise bad_argument("fold", f"an int in [0, {n_folds - 1}]", fold)
    if style is None:
        style = "interleaved" if n_classes == 80 else "blocks"
    if style not in FOLD_STYLES:
        raise bad_argument("style", f"one of {FOLD_STYLES} or None", style)
    ids = np.arange(1, n_classes + 1)
    chosen = ids[fold::n_folds] if style == "interleaved" else np.array_split(ids, n_folds)[fold]
    return tuple(int(c) for c in chosen)


def split_base_novel(vocabulary: Sequence[str], novel_fraction: float = 1 / 3, seed: int = 0,
                     novel: Iterable[str] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split class names into (base, novel), disjoint, together all of `vocabulary` but
    "background" (dropped, so a reader's vocabulary can be passed as is); both keep the
    vocabulary's order.

    novel: the novel names, explicitly; otherwise round(novel_fraction * n) names (at least
    one, and at least one base name) drawn with `seed`, the same on every machine.
    """
    names = [name for name in vocabulary if name != BACKGROUND]
    if len(set(names)) != len(names) or not all(isinstance(name, str) for name in names):
        raise bad_argument("vocabulary", "distinct class names", vocabulary)
    if novel is not None:
        chosen = set(novel)
        if not chosen <= set(names):
            raise bad_argument("novel", "names from the vocabulary", sorted(chosen - set(names)))
    else:
        if len(names) < 2:
            raise bad_argument("vocabulary", "at least 2 class names to split", vocabulary)
        if not isinstance(novel_fraction, (int, float)) or not 0.0 < novel_fraction < 1.0:
            raise bad_argument("novel_fraction", "a number in (0, 1)", novel_fraction)
        if not _is_int(seed):
            raise bad_argument("seed", "an int", seed)
        n_novel = min(max(round(novel_fraction * len(names)), 1), len(names) - 1)
        order = np.random.default_rng(seed).permutation(len(names))
        chosen = {names[k] for k in order[:n_novel]}
    return (tuple(name for name in names if name not in chosen),
            tuple(name for name in names if name in chosen))


@dataclass(eq=False)
class Episode:
    """One few-shot task: segment `class_name` in `target`, given `reference` examples.

    reference: the k shots (samples of the data set), reference_masks: each one's H x W bool
    mask of the class; target, target_mask: the same for the query image. The indices are
    the samples' indices in the data set (the target's is never among the references').
    """

    class_name: str
    reference: list[Any]
    reference_masks: list[np.ndarray]
    target: Any
    target_mask: np.ndarray
    index: int
    reference_indices: tuple[int, ...]
    target_index: int


class FewShotPairs(Sequence):
    """A seeded sequence of few-shot episodes over a data set (a reader or ShapeScenes).

    Episode i depends only on (seed, i) and the data set: a class drawn uniformly from
    `classes`, then shots + 1 distinct images that contain it (the first is the target).
    Which images contain which class comes from the reader's annotations
    (`class_names_of`, no decoding); for other data sets every sample is read once here.
    Images are decoded when an episode is read.

    Arguments:
      dataset: a Sequence of samples with `class_names` and `masks_of` (and `mask_of`).
      classes: class names, or ids into `dataset.vocabulary` (e.g. from `fold_classes`).
      shots: reference images per episode.
      n: number of episodes (1000, as in the usual PASCAL-5i / COCO-20i evaluation).
      seed: the episodes' seed.
    """

    def __init__(self, dataset: Sequence, classes: Iterable[str | int] | str, shots: int = 1,
                 n: int = 1000, seed: int = 0) -> None:
        for name, value, least in (("shots", shots, 1), ("n", n, 1), ("seed", seed, 0)):
            if not _is_int(value) or value < least:
                raise bad_argument(name, f"an int >= {least}", value)
        self.dataset, self.shots, self.n, self.seed = dataset, int(shots), int(n), int(seed)
        self.classes = _class_names(dataset, classes)
        images_of: dict[str, list[int]] = {name: [] for name in self.classes}
        names_of = getattr(dataset, "class_names_of", None)
        for i in range(len(dataset)):
            for name in (names_of(i) if names_of else set(dataset[i].class_names)):
                if name in images_of:
                    images_of[name].append(i)
        too_few = {name: len(found) for name, found in images_of.items() if len(found) <= shots}
        if too_few:
            raise bad_argument("classes", f"classes found in at least shots + 1 = {shots + 1} "
                               "images of the data set", f"image counts {too_few}")
        self.images_of = {name: tuple(found) for name, found in images_of.items()}

    def __len__(self) -> int:
        return self.n

    def plan(self, index: int) -> tuple[str, tuple[int, ...], int]:
        """Episode `index` without decoding: (class name, reference indices, target index)."""
        index = self._check_index(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        class_name = self.classes[int(rng.integers(len(self.classes)))]
        picks = rng.choice(self.images_of[class_name], size=self.shots + 1, replace=False)
        return class_name, tuple(int(i) for i in picks[1:]), int(picks[0])

    def __getitem__(self, index: int) -> Episode:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]  # type: ignore[return-value]
        index = self._check_index(index)
        class_name, reference_indices, target_index = self.plan(index)
        reference = [self.dataset[i] for i in reference_indices]
        target = self.dataset[target_index]
        return Episode(class_name=class_name, reference=reference,
                       reference_masks=[binary_mask(s, class_name) for s in reference],
                       target=target, target_mask=binary_mask(target, class_name), index=index,
                       reference_indices=reference_indices, target_index=target_index)

    def __repr__(self) -> str:
        return (f"FewShotPairs({len(self.classes)} classes, shots={self.shots}, n={self.n}, "
                f"seed={self.seed})")

    def _check_index(self, index: Any) -> int:
        if not _is_int(index):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for FewShotPairs of length {self.n}")
        return int(index) % self.n


def binary_mask(sample: Any, class_name: str) -> np.ndarray:
    """A sample's H x W bool mask of one class: `mask_of` for readers' samples (which falls
    back to `semantic` for stuff), the union of the class's instances otherwise."""
    if hasattr(sample, "mask_of"):
        return sample.mask_of(class_name)
    masks = sample.masks_of(class_name)
    return masks.any(axis=0) if len(masks) else np.zeros(sample.image.shape[:2], dtype=bool)


def _class_names(dataset: Sequence, classes: Iterable[str | int] | str) -> tuple[str, ...]:
    """`classes` as distinct names, checked against the data set's vocabulary if it has one."""
    vocabulary = getattr(dataset, "vocabulary", None)
    wanted = [classes] if isinstance(classes, (str, int, np.integer)) else list(classes)
    if not wanted:
        raise bad_argument("classes", "at least one class", classes)
    names = []
    for value in wanted:
        if _is_int(value):
            if vocabulary is None or not 1 <= value < len(vocabulary):
                raise bad_argument("classes", "class names, or ids in [1, len(dataset.vocabulary))"
                                   " when the data set has a vocabulary", value)
            value = vocabulary[value]
        elif not isinstance(value, str) or value == BACKGROUND:
            raise bad_argument("classes", f"class names other than {BACKGROUND!r}, or ids", value)
        elif vocabulary is not None and value not in vocabulary:
            raise bad_argument("classes", f"names from the data set's {len(vocabulary)} classes",
                               value)
        names.append(value)
    return tuple(dict.fromkeys(names))  # distinct, in the order given


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def few_shot_indices(classes_per_image: Sequence[set[int]], num_classes: int, shots: int, seed: int = 0) -> list[int]:
    """k-shot selection ("16 labelled images for each class"): from the rarest class up, add random
    images that contain the class until `shots` chosen images contain it (or every image that does)."""
    if not isinstance(shots, int) or shots < 1:
        raise bad_argument("shots", "an int >= 1", shots)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(classes_per_image))
    containing = [[int(i) for i in order if c in classes_per_image[i]] for c in range(num_classes)]
    counts, chosen = np.zeros(num_classes, dtype=int), []
    for c in sorted(range(num_classes), key=lambda c: len(containing[c])):
        for i in containing[c]:
            if counts[c] >= shots:
                break
            if i not in chosen:
                chosen.append(i)
                counts[list(classes_per_image[i])] += 1
    return sorted(chosen)
