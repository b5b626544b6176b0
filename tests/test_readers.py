"""Readers of real data sets, on tiny files written in each data set's own layout: annotations
come back pixel-exact, few-shot folds and episodes follow their conventions, bad data is named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samkit.datasets import (
    PARTS,
    BadDataError,
    BadDataWarning,
    CocoInstances,
    CocoPanoptic,
    FewShotPairs,
    FolderPairs,
    Sample,
    fold_classes,
    split_base_novel,
)

RNG = np.random.default_rng(0)
# pycocotools' own decode trips numpy 2's copy-keyword deprecation; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- writing files ----------------------------------------------------------------------

def photo(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(array: np.ndarray, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def box(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def starts(path: Path, rest: str = "") -> str:
    """A regex for an error message that starts with `path` (escaped) and goes on with `rest`."""
    return "^" + re.escape(str(path)) + rest


def one_warning(record) -> str:
    messages = [str(w.message) for w in record if issubclass(w.category, BadDataWarning)]
    assert len(messages) == 1, messages
    return messages[0]


# -- Kvasir-SEG ---------------------------------------------------------------------------

H, W = 32, 48
# JPEG masks: 0 / 255 regions on the 16 x 16 grid of JPEG's blocks, so > 127 recovers them exactly.
KVASIR_MASKS = {
    "cju0a": box(H, W, 0, 16, 16, 48),
    "cju0b": box(H, W, 16, 0, 32, 16) | box(H, W, 0, 32, 16, 48),
    "cju0c": np.zeros((H, W), dtype=bool),  # a polyp-free frame: no instance
}


def make_kvasir(root: Path) -> Path:
    for stem, mask in KVASIR_MASKS.items():
        save(photo(H, W), root / "images" / f"{stem}.jpg", quality=95)
        grey = mask.astype(np.uint8) * 255
        if stem == "cju0b":  # some Kvasir-SEG masks are RGB JPEGs
            save(np.repeat(grey[..., None], 3, axis=2), root / "masks" / f"{stem}.jpg", quality=90)
        else:
            save(grey, root / "masks" / f"{stem}.jpg", quality=90)
    (root / "images" / "Thumbs.db").write_bytes(b"not an image")  # other suffixes are ignored
    return root


def test_kvasir_masks_classes_and_semantic(tmp_path):
    root = make_kvasir(tmp_path / "Kvasir-SEG")
    reader = FolderPairs(root, layout="kvasir")
    assert reader.vocabulary == ("background", "polyp") and reader.skipped == []
    assert len(reader) == 3
    for index, (stem, mask) in enumerate(KVASIR_MASKS.items()):
        sample = reader[index]
        assert isinstance(sample, Sample) and sample.index == index
        assert sample.path == str(root / "images" / f"{stem}.jpg")
        assert sample.image.dtype == np.uint8 and sample.image.shape == (H, W, 3)
        assert np.array_equal(sample.image, decoded(root / "images" / f"{stem}.jpg"))
        assert np.array_equal(sample.semantic, mask.astype(np.int16))
        assert sample.semantic.dtype == np.int16
        if mask.any():
            assert sample.instance_masks.shape == (1, H, W) and sample.class_names == ["polyp"]
            assert np.array_equal(sample.instance_masks[0], mask)
            assert sample.instance_classes.tolist() == [1]
        else:
            assert sample.instance_masks.shape == (0, H, W) and sample.class_names == []
        assert np.array_equal(sample.mask_of("polyp"), mask)
        assert sample.masks_of("polyp").shape == (int(mask.any()), H, W)
    assert reader[-1].index == 2 and [s.index for s in reader[0:2]] == [0, 1]
    assert reader.class_names_of(0) == {"polyp"}
    with pytest.raises(IndexError):
        reader[3]
    with pytest.raises(TypeError):
        reader["0"]
    with pytest.raises(ValueError, match="^class_name: expected one of the 2 class names"):
        reader[0].masks_of("tumour")


def test_kvasir_class_name_and_bad_arguments(tmp_path):
    root = make_kvasir(tmp_path / "kvasir")
    reader = FolderPairs(root, class_name="lesion")
    assert reader.vocabulary == ("background", "lesion") and reader[0].class_names == ["lesion"]
    with pytest.raises(ValueError, match="^layout: expected one of"):
        FolderPairs(root, layout="pascal")
    with pytest.raises(ValueError, match="^root: expected a kvasir data set folder with images/"):
        FolderPairs(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="^class_name: expected None for layout 'celebamask'"):
        FolderPairs(root, layout="celebamask", class_name="skin")


# -- CelebAMask-HQ ------------------------------------------------------------------------

SIDE = 64  # the image; part masks are SIDE / 2, as 512 is half of CelebA-HQ's 1024
HALF = SIDE // 2
CELEBA_PARTS = {  # image number -> part -> SIDE/2 x SIDE/2 mask
    0: {"skin": box(HALF, HALF, 4, 4, 28, 28), "nose": box(HALF, HALF, 12, 14, 20, 18),
        "hair": box(HALF, HALF, 0, 0, 8, 32), "cloth": box(HALF, HALF, 28, 0, 32, 32)},
    2001: {"l_eye": box(HALF, HALF, 10, 8, 13, 13), "skin": box(HALF, HALF, 2, 2, 30, 30)},
}


def celeba_part_path(root: Path, number: int, part: str) -> Path:
    return root / "CelebAMask-HQ-mask-anno" / str(number // 2000) / f"{number:05d}_{part}.png"


def make_celebamask(root: Path) -> Path:
    for number, parts in CELEBA_PARTS.items():
        save(photo(SIDE, SIDE), root / "CelebA-HQ-img" / f"{number}.jpg")
        for part, mask in parts.items():
            save(mask.astype(np.uint8) * 255, celeba_part_path(root, number, part))
    return root


def upsampled(mask: np.ndarray) -> np.ndarray:
    return np.kron(mask, np.ones((2, 2), dtype=bool)).astype(bool)


def test_celebamask_parts_are_resized_and_painted_in_official_order(tmp_path):
    reader = FolderPairs(make_celebamask(tmp_path / "CelebAMask-HQ"), layout="celebamask")
    assert reader.vocabulary == ("background", *PARTS) and len(PARTS) == 18
    assert len(reader) == 2
    for index, (number, parts) in enumerate(CELEBA_PARTS.items()):
        sample = reader[index]
        assert sample.path.endswith(f"CelebA-HQ-img/{number}.jpg")
        assert sample.image.shape == (SIDE, SIDE, 3)
        present = [part for part in PARTS if part in parts]  # instances come in official order
        assert sample.class_names == present
        assert sample.instance_classes.tolist() == [1 + PARTS.index(p) for p in present]
        expected = np.zeros((SIDE, SIDE), dtype=np.int16)
        for part in present:
            mask = upsampled(parts[part])
            assert np.array_equal(sample.masks_of(part)[0], mask)  # as annotated, overlaps kept
            expected[mask] = 1 + PARTS.index(part)
        assert np.array_equal(sample.semantic, expected)
        assert reader.class_names_of(index) == set(parts)
    # The nose is painted over the skin, the skin instance still runs under it.
    first = reader[0]
    nose = upsampled(CELEBA_PARTS[0]["nose"])
    assert (first.semantic[nose] == 1 + PARTS.index("nose")).all()
    assert first.masks_of("skin")[0][nose].all()


# -- COCO instances -----------------------------------------------------------------------

CH, CW = 40, 48
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "human"},
              {"id": 3, "name": "car", "supercategory": "vehicle"},
              {"id": 7, "name": "dog", "supercategory": "animal"}]  # COCO's ids have gaps
POLYGON = [[4.0, 4.0, 36.0, 4.0, 36.0, 30.0, 4.0, 30.0]]  # person, the large one
RLE_MASK = box(CH, CW, 20, 24, 34, 40)  # car, overlaps the person's lower right
CROWD_MASK = box(CH, CW, 32, 0, 40, 20)  # a crowd of people, bottom left


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths, starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] + counts) if flat[0] else counts}


def make_coco(root: Path) -> tuple[Path, Path]:
    images = root / "val2017"
    entries, annotations = [], []
    for image_id, name in ((139, "000000000139.jpg"), (285, "000000000285.jpg")):
        save(photo(CH, CW), images / name)
        entries.append({"id": image_id, "file_name": name, "height": CH, "width": CW})
    annotations = [
        {"id": 10, "image_id": 139, "category_id": 1, "iscrowd": 0, "segmentation": POLYGON,
         "area": 832.0, "bbox": [4, 4, 32, 26]},
        {"id": 11, "image_id": 139, "category_id": 3, "iscrowd": 0,
         "segmentation": compressed_rle(RLE_MASK), "area": 224.0, "bbox": [24, 20, 16, 14]},
        {"id": 12, "image_id": 139, "category_id": 1, "iscrowd": 1,
         "segmentation": uncompressed_rle(CROWD_MASK), "area": 160.0, "bbox": [0, 32, 20, 8]},
    ]  # image 285 has no annotation: it is still a sample, with none
    path = root / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": CATEGORIES}))
    return images, path


def test_coco_instances_polygon_rle_and_crowd(tmp_path):
    images, annotation_json = make_coco(tmp_path)
    reader = CocoInstances(images, annotation_json)
    assert reader.vocabulary == ("background", "person", "car", "dog")
    assert len(reader) == 2 and reader.skipped == []
    sample = reader[0]
    assert sample.path == str(images / "000000000139.jpg")
    assert np.array_equal(sample.image, decoded(images / "000000000139.jpg"))
    polygon = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(POLYGON, CH, CW))).astype(bool)
    assert (polygon == box(CH, CW, 4, 4, 30, 36)).mean() > 0.97  # the rasterised rectangle
    # The crowd is not an instance; instances keep JSON order.
    assert sample.class_names == ["person", "car"] and sample.instance_classes.tolist() == [1, 2]
    assert np.array_equal(sample.instance_masks[0], polygon)
    assert np.array_equal(sample.instance_masks[1], RLE_MASK)
    # semantic: crowd first, then the large person, then the small car on top.
    expected = np.zeros((CH, CW), dtype=np.int16)
    expected[CROWD_MASK] = 1
    expected[polygon] = 1
    expected[RLE_MASK] = 2
    assert np.array_equal(sample.semantic, expected)
    assert np.array_equal(sample.mask_of("person"), polygon)  # instances only, not the crowd
    assert sample.masks_of("dog").shape == (0, CH, CW)
    assert reader.class_names_of(0) == {"person", "car"}
    empty = reader[1]
    assert empty.instance_masks.shape == (0, CH, CW) and not empty.semantic.any()


# -- COCO panoptic ------------------------------------------------------------------------

PH, PW = 24, 32
PANOPTIC_CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
                       {"id": 187, "name": "sky", "isthing": 0}]
# Segment ids that use each of R, G and B: 300 = 44 + 256, 70000 = 112 + 256 * 17 + 256^2.
SEGMENTS = {1: ("person", box(PH, PW, 8, 2, 20, 10), 0), 300: ("car", box(PH, PW, 14, 16, 22, 30), 0),
            70000: ("sky", box(PH, PW, 0, 0, 8, 32), 0), 5: ("person", box(PH, PW, 20, 0, 24, 12), 1)}


def panoptic_png(segments: dict, height: int = PH, width: int = PW) -> np.ndarray:
    ids = np.zeros((height, width), dtype=np.int64)
    for segment_id, (_, mask, _) in segments.items():
        ids[mask[:height, :width]] = segment_id
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2], axis=2).astype(np.uint8)


def make_panoptic(root: Path) -> tuple[Path, Path, Path]:
    images, pngs = root / "val2017", root / "panoptic_val2017"
    category_of = {c["name"]: c["id"] for c in PANOPTIC_CATEGORIES}
    entries, annotations = [], []
    for image_id in (1, 2):
        name = f"{image_id:012d}"
        save(photo(PH, PW), images / f"{name}.jpg")
        segments = SEGMENTS if image_id == 1 else {70000: SEGMENTS[70000], 300: SEGMENTS[300]}
        save(panoptic_png(segments), pngs / f"{name}.png")
        entries.append({"id": image_id, "file_name": f"{name}.jpg", "height": PH, "width": PW})
        annotations.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": [
            {"id": sid, "category_id": category_of[cname], "iscrowd": crowd, "area": int(mask.sum())}
            for sid, (cname, mask, crowd) in segments.items()]})
    path = root / "annotations" / "panoptic_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": PANOPTIC_CATEGORIES}))
    return images, path, pngs


def test_coco_panoptic_things_stuff_and_crowd(tmp_path):
    images, panoptic_json, pngs = make_panoptic(tmp_path)
    reader = CocoPanoptic(images, panoptic_json, pngs)
    assert reader.vocabulary == ("background", "person", "car", "sky")
    assert reader.thing_classes == ("person", "car") and reader.stuff_classes == ("sky",)
    sample = reader[0]
    assert sample.class_names == ["person", "car"]  # things, without the crowd; no stuff
    assert np.array_equal(sample.instance_masks[0], SEGMENTS[1][1])
    assert np.array_equal(sample.instance_masks[1], SEGMENTS[300][1])
    expected = np.zeros((PH, PW), dtype=np.int16)
    for _, (name, mask, _) in SEGMENTS.items():
        expected[mask] = reader.vocabulary.index(name)
    assert np.array_equal(sample.semantic, expected) and (sample.semantic == 0).any()
    assert np.array_equal(sample.mask_of("sky"), SEGMENTS[70000][1])  # stuff: from semantic
    assert reader.class_names_of(0) == {"person", "car", "sky"}
    assert reader.class_names_of(1) == {"car", "sky"} and reader[1].class_names == ["car"]


# -- few-shot -------------------------------------------------------------------------------

def test_fold_classes_pascal_5i_and_coco_20i():
    assert fold_classes(20, 0) == (1, 2, 3, 4, 5) and fold_classes(20, 3) == (16, 17, 18, 19, 20)
    assert fold_classes(80, 0) == tuple(range(1, 81, 4))
    assert fold_classes(80, 2)[:3] == (3, 7, 11) and len(fold_classes(80, 2)) == 20
    assert fold_classes(80, 0, style="blocks") == tuple(range(1, 21))
    for n_classes, n_folds, style in ((20, 4, None), (80, 4, None), (23, 4, "blocks"),
                                      (23, 4, "interleaved"), (920, 10, "interleaved")):
        folds = [fold_classes(n_classes, i, n_folds, style) for i in range(n_folds)]
        assert sorted(c for fold in folds for c in fold) == list(range(1, n_classes + 1))
        assert all(folds)
    with pytest.raises(ValueError, match=r"^fold: expected an int in \[0, 3\]"):
        fold_classes(20, 4)
    with pytest.raises(ValueError, match="^style: expected one of"):
        fold_classes(20, 0, style="random")


def test_split_base_novel_is_disjoint_covering_and_seeded():
    vocabulary = ("background", *(f"class{k}" for k in range(12)))
    base, novel = split_base_novel(vocabulary)
    assert len(novel) == 4 and len(base) == 8 and not set(base) & set(novel)
    assert set(base) | set(novel) == set(vocabulary) - {"background"}
    assert list(base) == sorted(base, key=vocabulary.index)  # vocabulary order
    assert split_base_novel(vocabulary) == (base, novel)
    assert split_base_novel(vocabulary, seed=1) != (base, novel)
    assert split_base_novel(vocabulary, novel=["class3", "class0"]) == (
        tuple(f"class{k}" for k in range(12) if k not in (0, 3)), ("class0", "class3"))
    with pytest.raises(ValueError, match="^novel: expected names from the vocabulary"):
        split_base_novel(vocabulary, novel=["zebra"])
    with pytest.raises(ValueError, match=r"^novel_fraction: expected a number in \(0, 1\)"):
        split_base_novel(vocabulary, novel_fraction=1.5)


FEW_CLASSES = ("a", "b", "c")


def make_fewshot_coco(root: Path) -> CocoInstances:
    """Eight 16 x 16 images: every one has "a", the even ones "b", images 0 and 1 "c"."""
    images = root / "images"
    entries, annotations = [], []
    for image_id in range(8):
        save(photo(16, 16), images / f"{image_id}.png")
        entries.append({"id": image_id, "file_name": f"{image_id}.png", "height": 16, "width": 16})
        present = ["a"] + (["b"] if image_id % 2 == 0 else []) + (["c"] if image_id < 2 else [])
        for k, name in enumerate(present):
            mask = box(16, 16, 4 * k, image_id, 4 * k + 4, image_id + 6)
            annotations.append({"id": 100 * image_id + k, "image_id": image_id, "iscrowd": 0,
                                "category_id": 1 + FEW_CLASSES.index(name), "area": 24.0,
                                "segmentation": compressed_rle(mask), "bbox": [0, 0, 1, 1]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": [
        {"id": 1 + k, "name": name} for k, name in enumerate(FEW_CLASSES)]}))
    return CocoInstances(images, path)


def test_fewshot_episodes_are_seeded_and_reference_is_not_target(tmp_path):
    reader = make_fewshot_coco(tmp_path)
    pairs = FewShotPairs(reader, ["a", "b"], shots=2, n=40, seed=3)
    plans = [pairs.plan(i) for i in range(len(pairs))]
    assert plans == [FewShotPairs(reader, ["a", "b"], shots=2, n=60, seed=3).plan(i) for i in range(40)]
    assert plans != [FewShotPairs(reader, ["a", "b"], shots=2, n=40, seed=4).plan(i) for i in range(40)]
    assert {name for name, _, _ in plans} == {"a", "b"}
    for name, references, target in plans:
        assert len(references) == 2 and len({*references, target}) == 3  # all distinct
        assert all(name in reader.class_names_of(i) for i in (*references, target))
    episode = pairs[5]
    name, references, target = plans[5]
    assert episode.class_name == name and episode.index == 5
    assert episode.reference_indices == references and episode.target_index == target
    assert [s.index for s in episode.reference] == list(references) and episode.target.index == target
    for sample, mask in zip([*episode.reference, episode.target],
                            [*episode.reference_masks, episode.target_mask]):
        assert mask.shape == (16, 16) and mask.any()
        assert np.array_equal(mask, sample.mask_of(name))
    # Ids from fold_classes are vocabulary ids; "c" is in only two images, too few for 2 shots.
    assert FewShotPairs(reader, [1, 2], shots=2, n=40, seed=3).plan(5) == plans[5]
    with pytest.raises(ValueError, match=r"^classes: expected classes found in at least shots \+ 1 = 3"):
        FewShotPairs(reader, ["c"], shots=2)
    with pytest.raises(ValueError, match="^classes: expected names from the data set's"):
        FewShotPairs(reader, ["zebra"])


def test_fewshot_on_plain_sequence_of_samples(tmp_path):
    samples = list(make_fewshot_coco(tmp_path))  # no class_names_of: read every sample once
    pairs = FewShotPairs(samples, "c", shots=1, n=10, seed=0)
    assert {frozenset((*pairs.plan(i)[1], pairs.plan(i)[2])) for i in range(10)} == {frozenset({0, 1})}
    with pytest.raises(ValueError, match="^classes: expected class names, or ids"):
        FewShotPairs(samples, [1])


# -- bad data ---------------------------------------------------------------------------------

def break_kvasir(root: Path, case: str) -> Path:
    """Break sample cju0b of a Kvasir-SEG folder; return the path that must be named."""
    image, mask = root / "images" / "cju0b.jpg", root / "masks" / "cju0b.jpg"
    if case == "missing mask":
        mask.unlink()
        return image
    if case == "missing image":
        image.unlink()
        return mask
    if case == "truncated image":
        truncate(image)
        return image
    if case == "garbage mask":
        mask.write_bytes(b"\xff\xd8 this is not a jpeg")
        return mask
    if case == "mask size":
        save(np.zeros((H + 8, W), np.uint8), mask)
        return mask
    raise AssertionError(case)


LAZY = ("truncated image", "garbage mask", "mask size")  # found when decoding


@pytest.mark.parametrize("case", ["missing mask", "missing image", *LAZY])
def test_kvasir_bad_data_is_named_or_skipped(tmp_path, case):
    root = make_kvasir(tmp_path / "kvasir")
    culprit = break_kvasir(root, case)
    if case in LAZY:  # cheap checks pass; reading the sample fails, naming the file
        reader = FolderPairs(root)
        assert len(reader) == 3
        reader[0]
        with pytest.raises(BadDataError, match=starts(culprit)) as error:
            reader[1]
        assert error.value.path == str(culprit)
        with pytest.raises(BadDataError, match=starts(culprit)):
            FolderPairs(root, validate=True)
        # skip_bad without validation only skips what is cheap to find: this still fails.
        with pytest.raises(BadDataError, match=starts(culprit)):
            FolderPairs(root, skip_bad=True, validate=False)[1]
    else:
        with pytest.raises(BadDataError, match=starts(culprit)) as error:
            FolderPairs(root)
        assert "skip_bad=True" in str(error.value)
    with pytest.warns(BadDataWarning) as record:
        reader = FolderPairs(root, skip_bad=True)
    message = one_warning(record)
    assert "skipped 1 bad sample(s), kept 2" in message and str(culprit) in message
    assert [path for path, _ in reader.skipped] == [str(culprit)]
    assert len(reader) == 2 and [s.path for s in reader] == [
        str(root / "images" / "cju0a.jpg"), str(root / "images" / "cju0c.jpg")]
    assert [s.index for s in reader] == [0, 1]


def test_truncated_png_mask_and_skip_warning_lists_first_few(tmp_path):
    root = make_celebamask(tmp_path / "celeba")
    bad_part = celeba_part_path(root, 2001, "l_eye")
    truncate(bad_part)
    with pytest.raises(BadDataError, match=starts(bad_part)):
        FolderPairs(root, layout="celebamask")[1]
    for number in range(3, 8):  # five images without part masks
        save(photo(SIDE, SIDE), root / "CelebA-HQ-img" / f"{number}.jpg")
    with pytest.raises(BadDataError, match=r"3\.jpg: image has no part masks .* \(and 4 more bad"):
        FolderPairs(root, layout="celebamask")
    with pytest.warns(BadDataWarning) as record:
        reader = FolderPairs(root, layout="celebamask", skip_bad=True)
    message = one_warning(record)
    assert "skipped 6 bad sample(s), kept 1" in message and "and 3 more" in message
    assert str(root / "CelebA-HQ-img" / "3.jpg") in message
    assert {path for path, _ in reader.skipped} == {str(bad_part)} | {
        str(root / "CelebA-HQ-img" / f"{n}.jpg") for n in range(3, 8)}
    assert len(reader) == 1 and reader[0].path.endswith("/0.jpg")


def test_celebamask_mask_of_another_aspect_is_bad(tmp_path):
    root = make_celebamask(tmp_path / "celeba")
    culprit = save(np.zeros((HALF, HALF + 4), np.uint8), celeba_part_path(root, 0, "hair"))
    with pytest.raises(BadDataError, match=starts(culprit, r": mask is 32 x 36 but its image is 64 x 64")):
        FolderPairs(root, layout="celebamask")[0]


def test_coco_bad_data(tmp_path):
    images, annotation_json = make_coco(tmp_path)
    missing = images / "000000000285.jpg"
    missing.unlink()
    with pytest.raises(BadDataError, match=starts(missing, r": image file is missing")):
        CocoInstances(images, annotation_json)
    with pytest.warns(BadDataWarning, match="skipped 1 bad sample"):
        assert len(CocoInstances(images, annotation_json, skip_bad=True)) == 1
    wrong = save(photo(CH, CW + 2), images / "000000000139.jpg")
    with pytest.warns(BadDataWarning, match="skipped 1 bad sample"):
        unchecked = CocoInstances(images, annotation_json, skip_bad=True, validate=False)
    with pytest.raises(BadDataError, match=starts(wrong, r": image is 40 x 50 but instances_val2017.json says 40 x 48")):
        unchecked[0]
    with pytest.warns(BadDataWarning) as record:
        reader = CocoInstances(images, annotation_json, skip_bad=True)
    assert "skipped 2 bad sample(s), kept 0" in one_warning(record) and len(reader) == 0
    annotation_json.write_text('{"images": [')
    with pytest.raises(BadDataError, match=starts(annotation_json, r": is not a COCO annotation file")):
        CocoInstances(images, annotation_json)
    with pytest.raises(BadDataError, match=starts(tmp_path / 'none.json', r": file is missing")):
        CocoInstances(images, tmp_path / "none.json")


def test_panoptic_bad_data(tmp_path):
    images, panoptic_json, pngs = make_panoptic(tmp_path)
    first, second = pngs / "000000000001.png", pngs / "000000000002.png"
    save(panoptic_png(SEGMENTS)[:, :20], first)  # a PNG narrower than its image
    with pytest.raises(BadDataError, match=starts(first, r": PNG is 24 x 20 but its image is 24 x 32")):
        CocoPanoptic(images, panoptic_json, pngs)[0]
    extra = {k: SEGMENTS[k] for k in (70000, 300)} | {999: ("car", box(PH, PW, 22, 20, 24, 24), 0)}
    save(panoptic_png(extra), second)  # a segment that segments_info does not list
    with pytest.raises(BadDataError, match=starts(second, r": segment ids \[999\] are not in segments_info")):
        CocoPanoptic(images, panoptic_json, pngs)[1]
    with pytest.warns(BadDataWarning, match="skipped 2 bad sample"):
        assert len(CocoPanoptic(images, panoptic_json, pngs, skip_bad=True)) == 0
    second.unlink()
    with pytest.raises(BadDataError, match=starts(second, r": panoptic PNG is missing")):
        CocoPanoptic(images, panoptic_json, pngs)
