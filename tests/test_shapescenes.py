"""ShapeScenes: determinism, splits, annotations, class sets, styles, argument checks."""

from __future__ import annotations

import re
import socket
from collections import Counter

import numpy as np
import pytest

from samkit.datasets import (
    BASE_CLASSES,
    ENTITY_CLASSES,
    NOVEL_CLASSES,
    STUFF_CLASSES,
    VOCABULARY,
    Scene,
    ShapeScenes,
)
from samkit.datasets import shapescenes

SIZE = 64  # small scenes keep the suite fast; the drawing code is the same at any size
STUFF_IDS = {VOCABULARY.index(name) for name in STUFF_CLASSES}


def same_scene(a: Scene, b: Scene) -> bool:
    return (np.array_equal(a.image, b.image) and np.array_equal(a.semantic, b.semantic)
            and np.array_equal(a.instance_masks, b.instance_masks)
            and np.array_equal(a.instance_classes, b.instance_classes))


@pytest.fixture(scope="module")
def sample() -> list[Scene]:
    dataset = ShapeScenes(split="train", classes="all", n=40, seed=7, size=SIZE)
    return [dataset[i] for i in range(len(dataset))]


def test_scene_depends_only_on_seed_split_and_index():
    forward = ShapeScenes(n=8, seed=3, size=SIZE)
    backward = ShapeScenes(n=20, seed=3, size=SIZE)  # a different length changes nothing
    in_order = [forward[i] for i in range(8)]
    reversed_order = [backward[i] for i in reversed(range(8))][::-1]
    assert all(same_scene(a, b) for a, b in zip(in_order, reversed_order))
    assert same_scene(forward[-1], forward[7])
    assert in_order[5].index == 5 and forward[-1].index == 7
    assert not same_scene(in_order[0], ShapeScenes(n=8, seed=4, size=SIZE)[0])


def test_splits_never_share_scenes():
    images = {split: [ShapeScenes(split=split, n=6, size=SIZE)[i].image for i in range(6)]
              for split in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        for image_a in images[a]:
            assert not any(np.array_equal(image_a, image_b) for image_b in images[b])


def test_length_indexing_and_iteration():
    dataset = ShapeScenes(n=3, size=SIZE)
    assert len(dataset) == 3 and len(list(dataset)) == 3
    for bad in (3, -4, 100):
        with pytest.raises(IndexError):
            dataset[bad]
    assert "ShapeScenes(" in repr(dataset) and "n=3" in repr(dataset)


def test_scene_arrays_have_the_documented_shapes(sample):
    for scene in sample:
        k = len(scene.instance_classes)
        assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
        assert scene.instance_masks.shape == (k, SIZE, SIZE)
        assert scene.instance_masks.dtype == bool
        assert scene.semantic.shape == (SIZE, SIZE) and scene.semantic.dtype == np.int16
        assert 1 <= k


def test_masks_agree_with_the_semantic_map(sample):
    min_area = shapescenes.MIN_VISIBLE_FRACTION * SIZE * SIZE
    for scene in sample:
        masks = scene.instance_masks
        assert masks.sum(axis=0).max() <= 1  # visible parts never overlap
        for mask, class_id in zip(masks, scene.instance_classes):
            assert mask.sum() >= min_area
            assert (scene.semantic[mask] == class_id).all()
        background = ~masks.any(axis=0)
        assert set(np.unique(scene.semantic[background])) <= STUFF_IDS
        assert not set(np.unique(scene.semantic[~background])) & STUFF_IDS


def test_class_names_and_masks_of(sample):
    scene = next(s for s in sample if len(s.instance_classes) >= 2)
    assert scene.class_names == [VOCABULARY[c] for c in scene.instance_classes]
    name = scene.class_names[0]
    expected = [m for m, n in zip(scene.instance_masks, scene.class_names) if n == name]
    assert np.array_equal(scene.masks_of(name), np.stack(expected))
    absent = next(n for n in ENTITY_CLASSES if n not in scene.class_names)
    assert scene.masks_of(absent).shape == (0, SIZE, SIZE)


@pytest.mark.parametrize("classes, allowed", [("base", BASE_CLASSES), ("novel", NOVEL_CLASSES)])
def test_class_sets_are_respected(classes, allowed):
    dataset = ShapeScenes(classes=classes, n=25, size=SIZE)
    seen = {name for i in range(len(dataset)) for name in dataset[i].class_names}
    assert seen <= set(allowed)
    assert len(seen) >= len(allowed) // 2  # and the set is actually used, not one class


def test_all_classes_mix_base_and_novel(sample):
    seen = {name for scene in sample for name in scene.class_names}
    assert seen & set(BASE_CLASSES) and seen & set(NOVEL_CLASSES)


def test_some_scenes_have_several_instances_of_one_class(sample):
    repeated = [s for s in sample if max(Counter(s.class_names).values()) >= 2]
    assert len(repeated) >= 3
    scene = repeated[0]
    name, count = Counter(scene.class_names).most_common(1)[0]
    assert len(scene.masks_of(name)) == count


def test_ocean_style_is_darker_and_flatter_with_the_same_annotations():
    plain = ShapeScenes(n=6, seed=2, size=SIZE)
    ocean = ShapeScenes(n=6, seed=2, size=SIZE, style="ocean")
    for i in range(6):
        a, b = plain[i], ocean[i]
        assert np.array_equal(a.instance_masks, b.instance_masks)
        assert np.array_equal(a.semantic, b.semantic)
        luma_a, luma_b = a.image.mean(axis=2), b.image.mean(axis=2)
        assert luma_b.mean() < 0.75 * luma_a.mean()
        assert luma_b.std() < 0.75 * luma_a.std()
        red, green, blue = b.image.reshape(-1, 3).mean(axis=0)
        assert blue > red and green > red  # blue-green cast


def test_vocabulary():
    assert len(ENTITY_CLASSES) >= 12 and len(STUFF_CLASSES) >= 3
    assert len(BASE_CLASSES) == 2 * len(NOVEL_CLASSES)
    assert not set(BASE_CLASSES) & set(NOVEL_CLASSES)
    assert set(BASE_CLASSES) | set(NOVEL_CLASSES) == set(ENTITY_CLASSES)
    assert VOCABULARY == ENTITY_CLASSES + STUFF_CLASSES
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert all(name.isalpha() for name in VOCABULARY)
    assert ShapeScenes.class_id("starfish") == VOCABULARY.index("starfish")
    assert ShapeScenes.class_id(STUFF_CLASSES[0]) == len(ENTITY_CLASSES)
    with pytest.raises(ValueError, match="name.*unicorn"):
        ShapeScenes.class_id("unicorn")


def test_every_class_has_its_own_shape_and_texture():
    assert set(shapescenes._SHAPES) == set(ENTITY_CLASSES)
    textures = shapescenes._TEXTURES
    assert set(textures) == set(VOCABULARY)
    photos = [photo for photo, _, _ in textures.values()]
    assert len(set(photos)) == len(photos)
    means = np.array([shapescenes.class_texture(name, SIZE).reshape(-1, 3).mean(axis=0)
                      for name in VOCABULARY])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(len(VOCABULARY), dtype=bool)].min() > 5  # colours differ too


def test_textures_load_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("ShapeScenes tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(shapescenes, "_PHOTOS", {})
    monkeypatch.setattr(shapescenes, "_CLASS_TEXTURES", {})
    for name in VOCABULARY:
        texture = shapescenes.class_texture(name, 300)
        assert texture.dtype == np.uint8 and texture.shape[0] >= 300 and texture.shape[1] >= 300


@pytest.mark.parametrize("size", [32, 97])
def test_other_sizes(size):
    scene = ShapeScenes(n=2, size=size, classes="all")[1]
    assert scene.image.shape == (size, size, 3) and scene.semantic.shape == (size, size)


@pytest.mark.parametrize("kwargs, argument", [
    ({"split": "training"}, "split"),
    ({"classes": "seen"}, "classes"),
    ({"style": "night"}, "style"),
    ({"n": 0}, "n"),
    ({"n": 2.5}, "n"),
    ({"seed": -1}, "seed"),
    ({"size": 8}, "size"),
    ({"size": True}, "size"),
    ({"multi_instance": 1.5}, "multi_instance"),
    ({"multi_instance": True}, "multi_instance"),
])
def test_bad_arguments_name_the_argument(kwargs, argument):
    # "<argument>: expected <what>, got <what came>"
    got = re.escape(repr(kwargs[argument]))
    with pytest.raises(ValueError, match=rf"^{argument}: expected .+, got {got}$"):
        ShapeScenes(**kwargs)


def test_scenes_per_second_reports_a_rate():
    assert shapescenes.scenes_per_second(n=3, size=SIZE) > 0


def test_multi_instance_sets_the_share_of_scenes_with_copies_of_one_class():
    def with_copies(data):  # scenes where some class has >= 2 instances
        return sum(max(Counter(scene.instance_classes.tolist()).values()) >= 2 for scene in data)

    default, explicit = ShapeScenes(n=40, seed=5), ShapeScenes(n=40, seed=5, multi_instance=0.3)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(default, explicit))  # the default is 0.3
    assert repr(default) == repr(explicit) and "multi_instance" in repr(ShapeScenes(multi_instance=0.9))
    assert with_copies(ShapeScenes(n=40, seed=5, multi_instance=1.0)) == 40
    assert with_copies(ShapeScenes(n=40, seed=5, multi_instance=1.0)) > with_copies(default)
