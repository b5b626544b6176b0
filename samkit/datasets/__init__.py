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

__all__ = [
    "ShapeScenes",
    "Scene",
    "ENTITY_CLASSES",
    "STUFF_CLASSES",
    "BASE_CLASSES",
    "NOVEL_CLASSES",
    "VOCABULARY",
]
