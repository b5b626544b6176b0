"""Data sets from config entries: `{"kind": "shapescenes", "split": "train", ...}`.

Training configs name their data as small maps, so one YAML file can switch between
ShapeScenes (class profile) and a real data set on disk (full profile):

    train: {kind: shapescenes, split: train, classes: base, n: 96, style: ocean}
    train: {kind: folder, root: /data/Kvasir-SEG, layout: kvasir}
    train: {kind: coco, image_dir: /data/coco/train2017, annotation_json: /data/coco/instances.json}
    train: {kind: semantic_folder, root: /data/cityscapes, layout: cityscapes, split: train}

Every other key is passed to the data set's constructor, except two views on the result:
`keep_classes`, a list of class names whose instances are kept (base/novel splits of real
data sets), and `take: [start, stop]`, a range of samples (train/validation splits of a folder).
Strings may use environment variables such as `$SAMKIT_DATA`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from samkit.datasets.coco import CocoInstances, CocoPanoptic
from samkit.datasets.folders import FolderPairs
from samkit.datasets.semantic import SemanticData, SemanticFolder
from samkit.datasets.shapescenes import STUFF_CLASSES, VOCABULARY, ShapeScenes
from samkit.errors import bad_argument, call_with

KINDS: dict[str, Callable[..., Sequence]] = {
    "shapescenes": ShapeScenes, "folder": FolderPairs, "coco": CocoInstances, "coco_panoptic": CocoPanoptic,
    "semantic_folder": SemanticFolder,
}


def spec_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    """A data set spec's arguments (all but `kind`), with environment variables such as
    $SAMKIT_DATA in string values expanded."""
    return {key: os.path.expandvars(value) if isinstance(value, str) and "$" in value else value
            for key, value in spec.items() if key != "kind"}


def build_dataset(spec: dict[str, Any], name: str = "data") -> Sequence:
    """The data set a config entry describes; `name` is the config key, for error messages."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise bad_argument(name, f"a map with a `kind` key (one of {', '.join(KINDS)})", spec)
    arguments = spec_arguments(spec)
    if spec["kind"] not in KINDS:
        raise bad_argument(f"{name}.kind", f"one of {sorted(KINDS)}", spec["kind"])
    keep, take = arguments.pop("keep_classes", None), arguments.pop("take", None)
    dataset = call_with(KINDS[spec["kind"]], arguments, name)
    if take is not None:
        if not (isinstance(take, (list, tuple)) and len(take) == 2):
            raise bad_argument(f"{name}.take", "[start, stop] sample indices", take)
        dataset = SampleRange(dataset, *take)
    return dataset if keep is None else ClassSubset(dataset, keep)


class SampleRange(Sequence):
    """Samples start..stop-1 of a data set (Python slice rules, so negative bounds count from the end)."""

    def __init__(self, dataset: Sequence, start: int | None, stop: int | None):
        self.dataset, self.indices = dataset, range(len(dataset))[slice(start, stop)]
        if not self.indices:
            raise bad_argument("take", f"a non-empty range of the {len(dataset)} samples", [start, stop])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


class ClassSubset(Sequence):
    """A view of a data set that keeps only the instances of some classes (samples stay)."""

    def __init__(self, dataset: Sequence, class_names: Sequence[str]):
        if isinstance(class_names, str) or not class_names:
            raise bad_argument("keep_classes", "a non-empty list of class names", class_names)
        self.dataset, self.class_names = dataset, tuple(class_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        keep = np.array([name in self.class_names for name in sample.class_names], dtype=bool)
        changes = {"instance_masks": sample.instance_masks[keep], "instance_classes": sample.instance_classes[keep]}
        if "class_names" in {f.name for f in dataclasses.fields(sample)}:  # real-data samples store the names
            changes["class_names"] = [n for n, k in zip(sample.class_names, keep) if k]
        return dataclasses.replace(sample, **changes)


def semantic_data(spec: dict[str, Any], name: str = "data", stuff_classes: Sequence[str] | None = None,
                  short_side: int | None = None) -> SemanticData:
    """The data set a config entry describes, as SemanticData: ShapeScenes (its 15 classes, stuff
    included), any reader of `samkit.datasets`, or `{kind: semantic_folder, root, layout, split}`."""
    dataset = build_dataset(spec, name)
    inner = getattr(dataset, "dataset", dataset)  # a SampleRange / ClassSubset view keeps its source
    if isinstance(inner, ShapeScenes):
        names, stuff, offset = VOCABULARY, STUFF_CLASSES, 0
    else:
        vocabulary = getattr(inner, "vocabulary", None)
        if vocabulary is None:
            raise bad_argument(name, "a data set with semantic label maps and a vocabulary", spec)
        names, offset = tuple(vocabulary[1:]), 1
        stuff = tuple(getattr(inner, "stuff_classes", ()))
    if stuff_classes is not None:
        unknown = sorted(set(stuff_classes) - set(names))
        if unknown:
            raise bad_argument("stuff_classes", f"class names of {name}", unknown)
        stuff = tuple(stuff_classes)
    return SemanticData(dataset, tuple(names), tuple(stuff), offset, short_side)
