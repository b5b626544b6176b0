"""The shared-image fast path of SAM's mask decoder equals the general path.

`SegmentAnythingAdapter.run_decoder` takes `decode_shared_image` when several prompt sets share one
image and one dense embedding; `run_decoder_general` is the official computation for any inputs. The
two are compared on TinySAM v1's architecture (segment_anything's Sam with a small ViT; the shipped
TinySAM v2 is a sam2 model, which takes its own decoder) and on SAM ViT-B's decoder, random weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samkit
import samkit.models.sam1 as sam1
from samkit.models import tinysam
from samkit.models.base import ImageEmbedding
from samkit.models.shared_image_decoder import chunk_sizes, decode_shared_image, supports

RANDOM_LOGITS_ATOL = 1e-5  # random weights: logits below ~0.5 (trained ones reach ~15, where the general
                           # path itself is ~1e-4 from a float64 evaluation)
IOU_ATOL = 1e-5


@pytest.fixture(scope="module")
def tinysam_v1():
    """TinySAM v1's architecture, segment_anything's Sam (seeded random weights)."""
    torch.manual_seed(0)
    return tinysam.load("random", torch.device("cpu"), "vit")


def count_fast_calls(monkeypatch, adapter_module) -> list[int]:
    """Counts the calls of `adapter_module`'s adapter that take the fast path (prompt sets per call)."""
    calls = []
    original = adapter_module.decode_shared_image

    def counted(*args, **kwargs):
        calls.append(args[4].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(adapter_module, "decode_shared_image", counted)
    return calls


@pytest.fixture
def fast_calls(monkeypatch):
    return count_fast_calls(monkeypatch, sam1)


def prompt_sets(model, batch: int, seed: int = 0) -> dict:
    """(sparse, dense) for every prompt kind, `batch` prompt sets each, in the model's input frame."""
    rng = np.random.default_rng(seed)
    size = model.image_size - 1
    corners = np.sort(rng.uniform(0, size, (batch, 2, 2)), axis=1)  # per box: (x0, y0) <= (x1, y1)
    boxes = corners.reshape(batch, 4)
    return {
        "points": model.prompt_tokens(rng.uniform(0, size, (batch, 1, 2)), np.ones((batch, 1))),
        "points and negatives": model.prompt_tokens(rng.uniform(0, size, (batch, 4, 2)),
                                                    np.tile([1, 0, 1, 0], (batch, 1))),
        "boxes": model.prompt_tokens(boxes=boxes),
        "box and points": model.prompt_tokens(rng.uniform(0, size, (batch, 2, 2)), np.tile([1, 0], (batch, 1)),
                                              boxes=boxes),
        "random tokens": (torch.randn(batch, 6, 256, generator=torch.Generator().manual_seed(seed)),
                          model.no_mask_dense(batch)),
    }


def assert_same_decoding(model, embedding, sparse, dense, label: str, logits_atol: float = RANDOM_LOGITS_ATOL):
    for multimask in (True, False):
        with torch.no_grad():
            fast = model.run_decoder(embedding, sparse, dense, multimask)
            general = model.run_decoder_general(embedding, sparse, dense, multimask)
        case = f"{model.name} {label}, multimask={multimask}"
        assert fast[0].shape == general[0].shape and fast[1].shape == general[1].shape, case
        difference = (fast[0] - general[0]).abs().max().item()
        print(f"{case}: logits up to {general[0].abs().max().item():.3g}, max difference {difference:.2e}; "
              f"IoU max difference {(fast[1] - general[1]).abs().max().item():.2e}")
        torch.testing.assert_close(fast[0], general[0], atol=logits_atol, rtol=0, msg=case)
        torch.testing.assert_close(fast[1], general[1], atol=IOU_ATOL, rtol=0, msg=case)


@pytest.mark.parametrize("kind", ["points", "points and negatives", "boxes", "box and points", "random tokens"])
def test_tinysam_v1_weights(tinysam_v1, scene_image, fast_calls, kind):
    embedding = tinysam_v1.embed(scene_image)
    sparse, dense = prompt_sets(tinysam_v1, 24)[kind]
    assert_same_decoding(tinysam_v1, embedding, sparse, dense, kind, RANDOM_LOGITS_ATOL)
    assert fast_calls == [24, 24]


def test_sam_vit_b_decoder(fast_calls):
    """SAM ViT-B's decoder (64 x 64 embedding) on a random image embedding: the image encoder is
    not part of the fast path, and skipping it keeps the test quick."""
    torch.manual_seed(0)
    model = samkit.load_model("sam_vit_b", checkpoint="random", device="cpu")
    embedding = ImageEmbedding(torch.randn(1, 256, 64, 64) * 0.5, [(1024, 1024)], [(1024, 1024)])
    sets = prompt_sets(model, 3, seed=2)
    for kind in ("points and negatives", "box and points", "random tokens"):
        assert_same_decoding(model, embedding, *sets[kind], kind, RANDOM_LOGITS_ATOL)
    assert fast_calls == [3] * 6


def test_chunks_do_not_change_results(tinysam_v1, scene_image):
    """Prompt sets split over several transformer passes (whose shared products the first pass
    computes and the later ones reuse) and uneven upscaling passes give the unchunked results."""
    embedding = tinysam_v1.embed(scene_image)
    sparse, dense = prompt_sets(tinysam_v1, 13, seed=3)["points and negatives"]
    pe = tinysam_v1.sam.prompt_encoder.get_dense_pe()
    decoder = tinysam_v1.sam.mask_decoder
    with torch.no_grad():
        whole = decode_shared_image(decoder, embedding.image_embed, pe, dense, sparse, True,
                                    chunk=13, upscale_chunk=13)
        chunked = decode_shared_image(decoder, embedding.image_embed, pe, dense, sparse, True,
                                      chunk=5, upscale_chunk=3)
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked[1], whole[1], atol=1e-6, rtol=0)


def test_chunk_sizes_shrink_with_the_grid():
    assert chunk_sizes(16 * 16) == (64, 16)  # TinySAM
    assert chunk_sizes(64 * 64) == (16, 1)  # SAM ViT-B/L/H: one prompt set's upscaled maps are 8 MB


def test_gradients_to_tokens(tinysam_v1, scene_image, fast_calls):
    """Methods learn prompt tokens through the decoder: the fast path's gradients equal the general
    path's."""
    model = tinysam_v1
    embedding = model.embed(scene_image)
    generator = torch.Generator().manual_seed(4)
    start = torch.randn(5, 4, 256, generator=generator)
    mask_weights = torch.randn(5, 3, 64, 64, generator=generator)
    iou_weights = torch.randn(5, 3, generator=generator)
    dense = model.no_mask_dense(5)
    grads, outputs = [], []
    for decoder in (model.run_decoder, model.run_decoder_general):
        tokens = start.clone().requires_grad_(True)
        masks, iou = decoder(embedding, tokens, dense, True)
        ((masks * mask_weights).mean() + (iou * iou_weights).sum()).backward()
        grads.append(tokens.grad)
        outputs.append(masks.detach())
    assert fast_calls == [5]
    scale = grads[1].abs().max().item()
    print(f"gradient scale {scale:.3g}, max difference {(grads[0] - grads[1]).abs().max().item():.2e}")
    assert scale > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(outputs[0], outputs[1], atol=RANDOM_LOGITS_ATOL, rtol=0)


def test_decode_seam_uses_fast_path(tinysam_v1, scene_image, fast_calls):
    """`model.decode` (the public seam) on many clicks takes the fast path, and equals one-by-one calls."""
    embedding = tinysam_v1.embed(scene_image)
    rng = np.random.default_rng(5)
    points = rng.uniform(0, 255, (6, 1, 2))
    labels = np.ones((6, 1))
    batched = tinysam_v1.decode(embedding, *tinysam_v1.prompt_tokens(points, labels))
    assert fast_calls == [6]
    for row in range(6):
        single = tinysam_v1.decode(embedding, *tinysam_v1.prompt_tokens(points[row], labels[row]))
        torch.testing.assert_close(single[0][0], batched[0][row], atol=RANDOM_LOGITS_ATOL, rtol=0)
        torch.testing.assert_close(single[1][0], batched[1][row], atol=IOU_ATOL, rtol=0)
    assert fast_calls == [6]  # a single prompt set has nothing to share: the general path


def test_two_prompt_sets_on_tinysam_take_the_general_path(tinysam_v1, scene_image, fast_calls):
    """Below ~3 prompt sets of 16 x 16 pixels sharing does not pay for its fixed cost."""
    embedding = tinysam_v1.embed(scene_image)
    tinysam_v1.decode(embedding, *tinysam_v1.prompt_tokens(np.array([[[9.0, 9.0]], [[99.0, 9.0]]]),
                                                                   np.ones((2, 1))))
    assert fast_calls == []


def test_fallback_for_mask_inputs(tinysam_v1, scene_image, fast_calls):
    """A dense embedding per prompt set (mask inputs) takes the general path."""
    embedding = tinysam_v1.embed(scene_image)
    masks = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(6))
    sparse, dense = tinysam_v1.prompt_tokens(np.array([[[30.0, 40.0]]] * 3), np.ones((3, 1)), masks=masks)
    assert dense.stride(0) != 0
    low_res, iou = tinysam_v1.decode(embedding, sparse, dense)
    assert fast_calls == []
    general = tinysam_v1.run_decoder_general(embedding, sparse, dense, True)
    torch.testing.assert_close(low_res, general[0], atol=0, rtol=0)
    torch.testing.assert_close(iou, general[1], atol=0, rtol=0)


def test_fallback_for_several_images(tinysam_v1, scene_image, fast_calls):
    """One image per prompt set takes the general path."""
    images = [scene_image, np.ascontiguousarray(scene_image[::-1]), np.ascontiguousarray(scene_image[:, ::-1])]
    embedding = tinysam_v1.embed(images)
    sparse, dense = tinysam_v1.prompt_tokens(np.array([[[60.0, 60.0]]] * 3), np.ones((3, 1)))
    low_res, iou = tinysam_v1.decode(embedding, sparse, dense)
    assert fast_calls == []
    for row in range(3):
        alone = tinysam_v1.decode(embedding.select(row), sparse[row:row + 1], dense[row:row + 1])
        torch.testing.assert_close(alone[0][0], low_res[row], atol=1e-5, rtol=1e-4)


def test_fallback_for_long_prompt_sets(tinysam_v1, scene_image, fast_calls):
    """Past heads x tokens = the attention's inner width the factored stream stops paying: general path."""
    decoder = tinysam_v1.sam.mask_decoder
    assert supports(decoder, 11) and not supports(decoder, 12)  # 5 output tokens + sparse ones, 8 heads, 128
    embedding = tinysam_v1.embed(scene_image)
    tinysam_v1.decode(embedding, torch.randn(4, 11, 256, generator=torch.Generator().manual_seed(7)))
    assert fast_calls == [4]
    tinysam_v1.decode(embedding, torch.randn(4, 12, 256, generator=torch.Generator().manual_seed(7)))
    assert fast_calls == [4]


def test_switched_off_the_seam_takes_the_general_path_with_the_same_masks(scene_image, fast_calls):
    model = tinysam.load("random", torch.device("cpu"), "vit")
    embedding = model.embed(scene_image)
    points, labels = np.random.default_rng(2).uniform(0, 255, (6, 1, 2)), np.ones((6, 1))
    fast = model.decode(embedding, *model.prompt_tokens(points, labels))
    model.shared_image_decoding = False
    general = model.decode(embedding, *model.prompt_tokens(points, labels))
    assert fast_calls == [6]  # only the first call
    torch.testing.assert_close(general[0], fast[0], atol=RANDOM_LOGITS_ATOL, rtol=0)


def test_methods_that_change_the_decoder_switch_the_fast_path_off(tmp_path):
    from samkit.methods import build_method

    v1 = tmp_path / "tinysam_v1.safetensors"  # a segment_anything TinySAM, the fast path's architecture
    tinysam.save(tinysam.load("random", torch.device("cpu"), "vit"), v1)
    scenes = {"kind": "shapescenes", "size": 64, "seed": 3, "n": 2}
    args = {"train": {**scenes, "split": "train"}, "eval_base": {**scenes, "split": "val"}, "lora_rank": 2,
            "checkpoint": str(v1)}
    decoder_lora = build_method("finetune", {**args, "lora_parts": ["mask_decoder"]}, torch.device("cpu"))
    encoder_lora = build_method("finetune", {**args, "lora_parts": ["image_encoder"]}, torch.device("cpu"))
    capl = build_method("cpc", {**args, "variant": "causal"}, torch.device("cpu"))
    assert not decoder_lora.adapter.shared_image_decoding and not capl.adapter.shared_image_decoding
    assert encoder_lora.adapter.shared_image_decoding  # the decoder is untouched: the fast path stays exact


@pytest.fixture
def fast_calls_sam2(monkeypatch):
    import samkit.models.sam2 as sam2_adapter

    return count_fast_calls(monkeypatch, sam2_adapter)


@pytest.mark.parametrize("kind", ["points", "points and negatives", "boxes", "box and points", "random tokens"])
def test_tinysam_v2_with_high_resolution_features(tinysam_v2, scene_image, fast_calls_sam2, kind):
    """sam2's decoder adds the stride-4 and stride-8 features after each ConvTranspose2d: the fast path
    adds them in its own row order and equals sam2's MaskDecoder.forward."""
    assert tinysam_v2.module.sam_mask_decoder.use_high_res_features
    embedding = tinysam_v2.embed(scene_image)
    sparse, dense = prompt_sets(tinysam_v2, 24)[kind]
    assert_same_decoding(tinysam_v2, embedding, sparse, dense, kind)
    assert fast_calls_sam2 == [24, 24]


def test_the_high_resolution_features_matter(tinysam_v2, scene_image):
    """Without them the fast path would compute other masks: the skip features are really added."""
    embedding = tinysam_v2.embed(scene_image)
    sparse, dense = prompt_sets(tinysam_v2, 4)["points"]
    decoder = tinysam_v2.module.sam_mask_decoder
    pe = tinysam_v2.module.sam_prompt_encoder.get_dense_pe()
    with torch.no_grad():
        with_skips = decode_shared_image(decoder, embedding.image_embed, pe, dense, sparse, True,
                                         high_res_features=tuple(embedding.high_res_feats))
        zeros = tuple(torch.zeros_like(f) for f in embedding.high_res_feats)
        without = decode_shared_image(decoder, embedding.image_embed, pe, dense, sparse, True, high_res_features=zeros)
    assert (with_skips[0] - without[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="high_res_features"):
        decode_shared_image(decoder, embedding.image_embed, pe, dense, sparse, True)


def test_official_sam2_builds_keep_the_general_path():
    """SAM 2.1's builds switch on the dynamic multimask fallback, which the fast path does not compute."""
    model = samkit.load_model("sam2.1_hiera_t", checkpoint="random", device="cpu")
    assert not supports(model.module.sam_mask_decoder, 2)
