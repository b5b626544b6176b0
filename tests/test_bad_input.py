"""Bad input fails early with a ValueError naming the argument, what was expected and what came."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samkit


@pytest.fixture(scope="module")
def predictor():
    from samkit.datasets import ShapeScenes

    model = samkit.load_model("tinysam", checkpoint="random", device="cpu")
    return samkit.Predictor(model, disk_cache=False).set_image(ShapeScenes("test", n=1)[0].image)


@pytest.mark.parametrize("kwargs, argument, fragment", [
    (dict(points=[[300.0, 10.0]], labels=[1]), "points", "inside the 256 x 256"),
    (dict(points=[[-1.0, 10.0]], labels=[1]), "points", "x=-1.0"),
    (dict(points=[[10.0, 10.0, 3.0]], labels=[1]), "points", "(N, 2)"),
    (dict(points=[[10.0, 10.0]], labels=[1, 0]), "labels", "shape (1, 1)"),
    (dict(points=[[10.0, 10.0]], labels=None), "labels", "one label per point"),
    (dict(points=[[10.0, 10.0]], labels=[7]), "labels", "values in"),
    (dict(points=[[np.nan, 10.0]], labels=[1]), "points", "finite"),
    (dict(box=[50.0, 10.0, 20.0, 100.0]), "boxes", "x0 <= x1"),
    (dict(box=[0.0, 0.0, 300.0, 100.0]), "boxes", "inside"),
    (dict(box=[0.0, 0.0, 30.0]), "boxes", "(4,)"),
    (dict(), "points/box/mask_input", "at least one prompt"),
    (dict(points=[[10.0, 10.0]], labels=[1], mask_input=np.zeros((2, 64, 64))), "masks", "(B, 1, H, W)"),
])
def test_bad_prompts(predictor, kwargs, argument, fragment):
    with pytest.raises(ValueError) as error:
        predictor.predict(**kwargs)
    message = str(error.value)
    assert message.startswith(f"{argument}: expected"), message
    assert fragment in message, message


@pytest.mark.parametrize("image, fragment", [
    (np.zeros((8, 8, 2), np.uint8), "H x W x 3"),
    (np.zeros((2, 8, 8, 3), np.uint8), "H x W x 3"),
    (np.zeros((8, 8, 3), np.int32), "dtype uint8 or float"),
    (np.full((8, 8, 3), 2.0, np.float32), "float values in [0, 1]"),
    (np.zeros((0, 8, 3), np.uint8), "non-empty"),
    ("cat.png", "numpy array or a PIL image"),
])
def test_bad_images(predictor, image, fragment):
    with pytest.raises(ValueError, match="^image: expected") as error:
        predictor.set_image(image)
    assert fragment in str(error.value)


def test_decode_rejects_wrong_tokens(predictor):
    model, embedding = predictor.model, predictor.embedding
    with pytest.raises(ValueError, match=r"^sparse: expected prompt tokens of shape \(B, N, 256\)"):
        model.decode(embedding, torch.zeros(2, 3, 128))
    with pytest.raises(ValueError, match=r"^embedding: expected 1 image or 2 images"):
        model.decode(samkit.ImageEmbedding.cat([embedding] * 3), torch.zeros(2, 3, 256))
    with pytest.raises(ValueError, match="^embedding: expected an ImageEmbedding"):
        model.decode(embedding.image_embed, torch.zeros(2, 3, 256))


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError) as error:
        samkit.load_model("sam_vit_x")
    message = str(error.value)
    assert message.startswith("name: expected one of tinysam, text_tinysam, text_tinysam_swap, sam_vit_b")
    assert "sam2.1_hiera_b+" in message and "'sam_vit_x'" in message


def test_bad_device():
    with pytest.raises(ValueError, match="^device: expected"):
        samkit.load_model("tinysam", checkpoint="random", device="tpu7")


def test_predict_before_set_image():
    predictor = samkit.Predictor(samkit.load_model("tinysam", checkpoint="random", device="cpu"))
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(points=[[1, 1]], labels=[1])
