"""The text-conditioned TinySAM: shapes, rare names sitting images out, the checkpoint round trip,
the shipped model segmenting by name, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samkit.checkpoints import CheckpointError
from samkit.datasets import ShapeScenes
from samkit.methods.text_tinysam_pretrain import TextTinySamPretrain
from samkit.models import text_tinysam

SCENES = {"kind": "shapescenes", "size": 64, "classes": "all", "seed": 5}


def small(**changes) -> TextTinySamPretrain:
    torch.manual_seed(0)
    return TextTinySamPretrain(train={**SCENES, "split": "train", "n": 4}, eval={**SCENES, "split": "val", "n": 2},
                               spatial_points=4, **changes)


def test_every_name_gets_a_map_and_only_decoder_and_projection_train():
    method = small()
    embedding, _ = method.images.embed([method.train_data.item(i)[0] for i in range(2)])
    logits = method.class_logits(embedding)
    assert logits.shape[:2] == (2, 15) and logits.shape[-2:] == method.adapter.low_res_size
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"sam.mask_decoder", "text.projection"}


def test_a_rare_name_sits_out_most_images_and_then_gets_no_gradient():
    method = small(rare_classes=["sand", "crab"], rare_rate=0.1)
    rng = np.random.default_rng(0)
    sand = method.class_names.index("sand")
    index = next(i for i in range(len(method)) if sand in method.train_data.classes_in(i))
    asked = np.mean([sand in method.train_sample(index, rng)["queried"] for _ in range(400)])
    assert 0.05 < asked < 0.16  # takes part in about rare_rate of the images that show it
    batch = [method.train_sample(i, rng) for i in range(4)]
    batch = [{**b, "queried": sorted(set(b["queried"]) | {sand})} for b in batch]  # sand asked for everywhere
    batch[0]["queried"].remove(sand)  # ... but where it sits out, its token is not asked and its pixels not counted
    with torch.no_grad():
        tokens = method.text(method.class_names)
    tokens.requires_grad_(True)
    method.text = _Fixed(tokens, method.class_names)  # read the gradient on each name's token
    loss, _ = method(batch)
    (grad,) = torch.autograd.grad(loss, tokens)
    assert grad.abs().sum() > 0
    alone, _ = method(batch[:1])
    (grad,) = torch.autograd.grad(alone, tokens)
    assert grad[sand].abs().max() == 0 and grad.abs().sum() > 0


class _Fixed(torch.nn.Module):
    """Stands in for the text prompt encoder with given tokens."""

    def __init__(self, tokens: torch.Tensor, names):
        super().__init__()
        self.tokens, self.names = tokens, list(names)

    def forward(self, names):
        return self.tokens[[self.names.index(n) for n in names]]


def test_checkpoint_round_trip(tmp_path):
    method = small(rare_classes=["rock"])
    torch.nn.init.normal_(method.text.projection.bias)
    path = tmp_path / "text.safetensors"
    text_tinysam.save(method, path)
    model = text_tinysam.load("text_tinysam", checkpoint=path, device="cpu")
    assert model.rare_classes == ("rock",) and model.class_names == method.class_names and model.spatial_points == 4
    assert model.adapter.rare_classes == ("rock",)  # what SSPrompt and notebook 03 read
    assert torch.equal(model.text.projection.bias, method.text.projection.bias)
    for key, value in method.adapter.mask_decoder.state_dict().items():
        assert torch.allclose(model.adapter.mask_decoder.state_dict()[key], value.half().float())
    assert (path.with_name(path.name + ".sha256")).read_text().split()[0] == model.adapter.checkpoint_sha256
    image = method.eval_data.item(0)[0]
    logits = model.segment(image, ["rock", "crab"])
    assert logits.shape == (2, *image.shape[:2]) and logits.dtype == np.float32


def test_the_shipped_model_segments_a_trained_name_better_than_a_random_token():
    model = text_tinysam.load("text_tinysam", device="cpu")
    scenes = ShapeScenes("test", "all", n=16, seed=3)
    names = list(model.class_names)
    k = names.index("pebble")  # common in pre-training
    tokens = model.class_tokens(names)
    noise = torch.randn_like(tokens[k])
    swapped = tokens.clone()
    swapped[k] = noise * tokens[k].norm() / noise.norm()  # the same norm, no name behind it
    named, random = [], []
    for scene in scenes:
        truth = scene.semantic == ShapeScenes.class_id("pebble")
        if not truth.any():
            continue
        for scores, prompt in ((named, tokens), (random, swapped)):
            mask = model.segment_tokens(scene.image, prompt).argmax(0) == k  # the class map's pebble pixels
            scores.append((mask & truth).sum() / max(1, (mask | truth).sum()))
    assert len(named) >= 3 and np.mean(named) > np.mean(random) + 0.2


def test_bad_names_and_a_mismatched_tinysam_are_named(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        text_tinysam.check_class_names("crab")  # a string, not a list of names
    with pytest.raises(ValueError, match=r"class_names\[1\]"):
        text_tinysam.check_class_names(["crab", ""])
    with pytest.raises(ValueError, match="name"):
        text_tinysam.load("text_tinysam_v9")
    with pytest.raises(ValueError, match="rare_classes"):
        small(rare_classes=["unicorn"])
    method = small()
    method.adapter.checkpoint_sha256 = "0" * 64  # as if trained on another TinySAM's embeddings
    text_tinysam.save(method, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="retrain"):
        text_tinysam.load("text_tinysam", checkpoint=tmp_path / "other.safetensors", device="cpu")


def test_name_mask_is_where_the_name_wins_the_semantic_map():
    model = text_tinysam.load("text_tinysam", device="cpu")
    scene = ShapeScenes("test", "all", n=2, seed=2)[0]
    embedding = model.adapter.embed([scene.image])
    semantic = model.semantic(scene.image)
    for name in ("pebble", "water"):
        assert np.array_equal(model.name_mask(embedding, name), semantic == model.class_names.index(name))
    assert model.name_mask(embedding, "submarine").shape == semantic.shape  # any word MiniLM reads
    with pytest.raises(ValueError, match="class_names"):
        model.name_mask(embedding, "")
