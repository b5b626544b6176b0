"""Datasets: ShapeScenes (synthetic, offline) and readers for real datasets."""

from samkit.datasets.shapescenes import (
    BASE_CLASSES,
    ENTITY_CLASSES,
    NOVEL_CLASSES,
    STUFF_CLASSES,
    VOCABULARY,
    Scene,
    ShapeScenes,
)
from samkit.datasets.readers import BACKGROUND, BadDataError, BadDataWarning, Reader, Sample
from samkit.datasets.folders import PARTS, FolderPairs
from samkit.datasets.coco import CocoInstances, CocoPanoptic
from samkit.datasets.fewshot import (
    Episode,
    FewShotPairs,
    binary_mask,
    fold_classes,
    split_base_novel,
)

__all__ = [
    "ShapeScenes",
    "Scene",
    "ENTITY_CLASSES",
    "STUFF_CLASSES",
    "BASE_CLASSES",
    "NOVEL_CLASSES",
    "VOCABULARY",
    "Sample",
    "Reader",
    "BadDataError",
    "BadDataWarning",
    "BACKGROUND",
    "FolderPairs",
    "PARTS",
    "CocoInstances",
    "CocoPanoptic",
    "Episode",
    "FewShotPairs",
    "binary_mask",
    "fold_classes",
    "split_base_novel",
]
