"""The full recipes (`samkit/configs/*_full.yaml`) as a GPU user launches them, with the shipped
YAML and the data laid out where it points ($SAMKIT_DATA), on a few tiny images per data set and
with TinySAM in place of the big SAM so that one epoch runs on a CPU in seconds. What is checked
is the plumbing a researcher would otherwise meet on the cluster: paths, readers, folds, the
methods' own arguments, checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_readers import box, celeba_part_path, compressed_rle, make_panoptic, photo, save

from samkit.train import fit, load_config

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
QUICK = ["epochs=1", "num_workers=0", "progress=false", "tensorboard=false", "method_args.model=tinysam"]


def launch(name: str, data: Path, run: Path, monkeypatch, *overrides: str):
    monkeypatch.setenv("SAMKIT_DATA", str(data))
    return fit(load_config(name, [f"run_dir={run}", *QUICK, *overrides]))


def make_celebamask(data: Path) -> None:
    """Four faces in CelebAMask-HQ's layout; "hat" is one of the recipe's novel classes."""
    root = data / "CelebAMask-HQ"
    parts = {"skin": box(32, 32, 4, 4, 28, 28), "nose": box(32, 32, 12, 14, 20, 18),
             "hair": box(32, 32, 0, 0, 8, 32), "hat": box(32, 32, 0, 8, 5, 24)}
    for number in range(4):
        save(photo(64, 64), root / "CelebA-HQ-img" / f"{number}.jpg")
        for part, mask in parts.items():
            save(mask.astype(np.uint8) * 255, celeba_part_path(root, number, part))


@pytest.mark.parametrize("name", ["finetune_full", "cpcsam_full"])
def test_lora_recipes_run_on_the_celebamask_layout(name, tmp_path, monkeypatch):
    make_celebamask(tmp_path)
    history = launch(name, tmp_path, tmp_path / "run", monkeypatch, "batch_size=2",
                     "method_args.train.take=[0, 2]", "method_args.eval_base.take=[2, 4]",
                     "method_args.eval_novel.take=[2, 4]")
    assert 0 <= history["dice_base"].iloc[-1] <= 1 and 0 <= history["dice_novel"].iloc[-1] <= 1
    assert np.isfinite(history["train_loss"].iloc[-1])
    assert (tmp_path / "run" / "best.safetensors").exists() and (tmp_path / "run" / "last.safetensors").exists()


COCO_CLASSES = [f"class{k}" for k in range(8)]


def make_coco_folds(data: Path) -> None:
    """COCO 2014's layout: twelve 48 x 48 images, three classes each, every class in 4+ images."""
    for split in ("train2014", "val2014"):
        entries, annotations = [], []
        for image_id in range(12):
            name = f"COCO_{split}_{image_id:012d}.jpg"
            save(photo(48, 48), data / "coco" / split / name)
            entries.append({"id": image_id, "file_name": name, "height": 48, "width": 48})
            for k in range(3):
                category = (image_id + 3 * k) % len(COCO_CLASSES)
                mask = box(48, 48, 16 * k, 4 + image_id, 16 * k + 14, 20 + image_id)
                annotations.append({"id": 10 * image_id + k, "image_id": image_id, "category_id": category + 1,
                                    "iscrowd": 0, "area": float(mask.sum()),
                                    "segmentation": compressed_rle(mask), "bbox": [0, 0, 1, 1]})
        path = data / "coco" / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": [
            {"id": k + 1, "name": name} for k, name in enumerate(COCO_CLASSES)]}))


def test_prosam_recipe_runs_on_coco_folds(tmp_path, monkeypatch):
    make_coco_folds(tmp_path)
    with pytest.warns(UserWarning, match="backbone: no ResNet-50 weights"):  # none on disk here
        history = launch("prosam_full", tmp_path, tmp_path / "run", monkeypatch, "batch_size=2",
                         "method_args.train_episodes=4", "method_args.test_episodes=2", "method_args.eval_batch=2")
    assert 0 <= history["miou"].iloc[-1] <= 1 and np.isfinite(history["train_loss"].iloc[-1])
    assert (tmp_path / "run" / "best.safetensors").exists()


def make_cityscapes(data: Path) -> None:
    """Cityscapes' layout (leftImg8bit + gtFine train ids): road, sky, a car and a person."""
    for split, count in (("train", 3), ("val", 2)):
        for k in range(count):
            ids = np.full((32, 64), 255, dtype=np.uint8)
            ids[:10] = 10  # sky
            ids[20:] = 0  # road
            ids[12:28, 4 + 8 * k:24 + 8 * k] = 13  # car
            ids[8:24, 50:56] = 11  # person
            stem = f"aachen_{k:06d}_000019"
            for folder, suffix, array in (("leftImg8bit", "leftImg8bit", photo(32, 64)),
                                          ("gtFine", "gtFine_labelTrainIds", ids)):
                path = data / "cityscapes" / folder / split / "aachen" / f"{stem}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)


def place_panoptic(scratch: Path, image_dir: Path, panoptic_json: Path, png_dir: Path) -> None:
    """A small COCO-panoptic set (things, stuff, a crowd) moved to the paths a recipe names."""
    images, annotations, pngs = make_panoptic(scratch)
    for source, target in ((images, image_dir), (annotations, panoptic_json), (pngs, png_dir)):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)


def test_ssprompt_recipe_runs_on_the_cityscapes_layout(tmp_path, monkeypatch):
    make_cityscapes(tmp_path)
    coco = tmp_path / "coco"  # the text prompt projection is fitted on COCO panoptic
    place_panoptic(tmp_path / "scratch", coco / "train2017", coco / "annotations" / "panoptic_train2017.json",
                   coco / "annotations" / "panoptic_train2017")
    history = launch("ssprompt_full", tmp_path, tmp_path / "run", monkeypatch, "eval_every=1", "batch_size=1",
                     "method_args.shots=1", "method_args.short_side=64",
                     "method_args.text_prompts.encoder=minilm",  # CLIP's weights cannot be fetched here
                     "method_args.text_prompts.steps=2", "method_args.text_prompts.batch=1")
    assert 0 <= history["miou"].iloc[-1] <= 1 and np.isfinite(history["train_loss"].iloc[-1])
    assert (tmp_path / "run" / "last.safetensors").exists()


def test_openworldsam_recipe_runs_on_coco_and_ade20k_panoptic(tmp_path, monkeypatch):
    coco, ade = tmp_path / "coco", tmp_path / "ADEChallengeData2016"
    for k, (image_dir, panoptic_json, png_dir) in enumerate((
            (coco / "train2017", coco / "annotations/panoptic_train2017.json", coco / "annotations/panoptic_train2017"),
            (coco / "val2017", coco / "annotations/panoptic_val2017.json", coco / "annotations/panoptic_val2017"),
            (ade / "images/validation", ade / "ade20k_panoptic_val.json", ade / "ade20k_panoptic_val"))):
        place_panoptic(tmp_path / f"scratch{k}", image_dir, panoptic_json, png_dir)
    history = launch("openworldsam_full", tmp_path, tmp_path / "run", monkeypatch, "batch_size=2", "eval_every=1",
                     "method_args.text_encoder=minilm")  # CLIP's weights cannot be fetched here
    assert np.isfinite(history["train_loss"].iloc[-1]) and 0 <= history["miou_base"].iloc[-1] <= 1
    assert (tmp_path / "run" / "best.safetensors").exists()
