"""The model seam (embed -> prompt_tokens -> decode) and the Predictor on TinySAM's architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samkit
from samkit.models.base import ImageEmbedding


@pytest.fixture
def model(tinysam_random):
    return tinysam_random  # conftest: TinySAM's architecture, random weights


@pytest.fixture
def image(scene_image):
    return scene_image


def test_seam_shapes(model, image):
    embedding = model.embed(image)
    assert embedding.image_embed.shape == (1, 256, 16, 16)
    sparse, dense = model.prompt_tokens(points=np.array([[[10.0, 20.0]], [[100.0, 50.0]]]), labels=np.ones((2, 1)))
    assert sparse.shape == (2, 2, 256)  # the click plus SAM's padding token
    assert dense.shape == (2, 256, 16, 16)
    low_res, iou = model.decode(embedding, sparse, dense)
    assert low_res.shape == (2, 3, 64, 64) and iou.shape == (2, 3)
    low_res, iou = model.decode(embedding, sparse, dense, multimask=False)
    assert low_res.shape == (2, 1, 64, 64)


def test_batched_decode_equals_one_by_one(model, image):
    embedding = model.embed(image)
    boxes = np.array([[10, 10, 100, 120], [50, 60, 200, 250], [0, 0, 255, 255]], dtype=np.float32)
    sparse, dense = model.prompt_tokens(boxes=boxes)
    batched, batched_iou = model.decode(embedding, sparse, dense)
    for row in range(3):
        single, single_iou = model.decode(embedding, *model.prompt_tokens(boxes=boxes[row]))
        torch.testing.assert_close(single[0], batched[row], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single_iou[0], batched_iou[row], atol=1e-6, rtol=1e-5)


def test_aligned_images_and_prompt_sets(model, image):
    """B images with B prompt sets in one call equals each image decoded alone."""
    other = np.ascontiguousarray(image[::-1])
    embedding = model.embed([image, other])
    assert len(embedding) == 2
    sparse, dense = model.prompt_tokens(points=np.array([[[60.0, 60.0]], [[60.0, 60.0]]]), labels=np.ones((2, 1)))
    together, _ = model.decode(embedding, sparse, dense)
    for row in range(2):
        alone, _ = model.decode(embedding.select(row), sparse[row:row + 1], dense[row:row + 1])
        torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=1e-4)


def test_decode_accepts_learned_tokens_and_backpropagates(model, image):
    """Methods feed their own tokens: any (B, N, 256) tensor works and receives gradients."""
    embedding = model.embed(image)
    tokens = torch.randn(4, 5, 256, requires_grad=True)
    low_res, iou = model.decode(embedding, tokens)
    (low_res.mean() + iou.mean()).backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert embedding.image_embed.grad is None  # the frozen encoder's output is not a leaf we train


def test_prompt_tokens_in_original_image_pixels(model):
    """Coordinates of a 512 x 384 image map onto the 256-pixel input frame."""
    sparse_original, _ = model.prompt_tokens(points=[[256.0, 192.0]], labels=[1], original_size=(384, 512))
    sparse_input, _ = model.prompt_tokens(points=[[128.0, 96.0]], labels=[1])
    torch.testing.assert_close(sparse_original, sparse_input)


def test_predictor_caches_embeddings(model, image):
    predictor = samkit.Predictor(model)
    predictor.set_image(image)
    predictor.set_image(image.copy())  # same content, another buffer
    assert predictor.encoder_calls == 1
    masks, scores, low_res = predictor.predict(points=[[60, 60]], labels=[1])
    assert masks.shape == (3, 256, 256) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 64, 64)
    batched, batched_scores, _ = predictor.predict(box=np.array([[10, 10, 100, 100], [20, 30, 200, 220]]))
    assert batched.shape == (2, 3, 256, 256) and batched_scores.shape == (2, 3)


@pytest.mark.parametrize("variant", ["gray", "rgba", "float", "pil"])
def test_predictor_accepts_image_forms(model, image, variant):
    from PIL import Image

    forms = {
        "gray": image.mean(axis=2).astype(np.uint8),
        "rgba": np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2),
        "float": image.astype(np.float32) / 255.0,
        "pil": Image.fromarray(image),
    }
    predictor = samkit.Predictor(model, disk_cache=False).set_image(forms[variant])
    assert predictor.original_size == (256, 256)
    masks, _, _ = predictor.predict(points=[[60, 60]], labels=[1])
    assert masks.shape == (3, 256, 256)
    if variant in ("rgba", "float", "pil"):  # the same pixels as the RGB uint8 image: the same embedding
        reference = samkit.Predictor(model, disk_cache=False).set_image(image)
        torch.testing.assert_close(predictor.embedding.image_embed, reference.embedding.image_embed)


def test_embedding_select_and_cat(model, image):
    embedding = model.embed([image, image[::-1].copy(), image[:, ::-1].copy()])
    picked = embedding.select([2, 0])
    assert len(picked) == 2
    torch.testing.assert_close(picked.image_embed[1], embedding.image_embed[0])
    joined = ImageEmbedding.cat([embedding.select(0), embedding.select(1)])
    torch.testing.assert_close(joined.image_embed, embedding.image_embed[:2])


def test_parts_for_training_on_every_implementation(model, official_checkpoints):
    from samkit.errors import UnsupportedModelError

    assert model.mask_decoder is model.module.mask_decoder and model.low_res_size == (64, 64)
    assert model.output_tokens == 5 and len(model.decoder_cross_attentions()) == 5  # IoU + 4 mask tokens
    sam2 = samkit.load_model("sam2.1_hiera_t", checkpoint=official_checkpoints["sam2.1_hiera_t"], device="cpu")
    assert sam2.mask_decoder is sam2.module.sam_mask_decoder and sam2.output_tokens == 6  # + object score
    assert sam2.prompt_encoder is sam2.module.sam_prompt_encoder
    owner, name, _ = sam2.decoder_cross_attentions()[0]
    assert getattr(owner, name) is sam2.module.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image
    with pytest.raises(ValueError, match="^name: expected one of"):
        model.part("decoder")
    broken = samkit.models.base.SamAdapter.part_paths | {"mask_decoder": "missing_decoder"}
    model.part_paths, saved = broken, model.part_paths
    try:
        with pytest.raises(UnsupportedModelError, match="has no mask_decoder at module.missing_decoder"):
            model.mask_decoder
    finally:
        model.part_paths = saved


def test_lora_finds_sam2s_decoder_through_the_adapters_paths(official_checkpoints):
    from samkit.lora import add_lora, lora_state_dict

    sam2 = samkit.load_model("sam2.1_hiera_t", checkpoint=official_checkpoints["sam2.1_hiera_t"], device="cpu")
    with pytest.raises(ValueError, match="none match"):  # segment_anything's names do not fit SAM 2
        add_lora(sam2.module, parts=("mask_decoder",))
    add_lora(sam2.module, rank=2, parts=("mask_decoder",), paths=sam2.part_paths)
    assert lora_state_dict(sam2.module) and all(k.startswith("sam_mask_decoder.") for k in lora_state_dict(sam2.module))


@pytest.mark.parametrize("name", ["tinysam", "sam2.1_hiera_t"])  # tinysam: v2
def test_sam2_decode_both_equals_two_runs(name, scene_image):
    """TinySAM v2's decoder gives the single mask and the candidates from one run; SAM 2.1's picks its
    single mask at run time (dynamic multimask), so it keeps two runs. Either way, the same outputs."""
    from samkit.models.base import SamAdapter

    from samkit.models import tinysam

    torch.manual_seed(0)
    model = (tinysam.load("random", torch.device("cpu"), "hiera") if name == "tinysam"
             else samkit.load_model(name, checkpoint="random", device="cpu"))
    assert model.single_run_for_both() == (name == "tinysam")
    if name == "tinysam":
        embedding = model.embed(scene_image)
    else:  # SAM 2.1's 1024 px encoder is not what is tested: random features of its sizes
        generator = torch.Generator().manual_seed(1)
        embedding = ImageEmbedding(torch.randn(1, 256, 64, 64, generator=generator), [(1024, 1024)], [(1024, 1024)],
                                   [torch.randn(1, 32, 256, 256, generator=generator),
                                    torch.randn(1, 64, 128, 128, generator=generator)])
    sparse, dense = model.prompt_tokens(np.array([[[40.0, 50.0]], [[120.0, 90.0]]]), np.ones((2, 1)))
    with torch.no_grad():
        both, two_runs = model.decode_both(embedding, sparse, dense), SamAdapter.decode_both(model, embedding, sparse, dense)
    for ours, theirs in zip(both, two_runs):
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours[1], theirs[1], atol=1e-6, rtol=0)
    if name != "tinysam":
        with pytest.raises(ValueError, match="multimask"):
            model.run_decoder(embedding, sparse, dense, None)
