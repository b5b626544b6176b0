"""SSPrompt: the fusion of Eq. 4/6, what trains, the semantic head's shapes, data helpers, the text prompt cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samkit.methods import ssprompt
from samkit.methods.ssprompt import (
    IGNORE,
    PromptFusion,
    SSPrompt,
    class_iou,
    class_mask_logits,
    confusion_matrix,
    fuse,
    labels_on_grid,
    point_grid,
)
from samkit.datasets.fewshot import few_shot_indices
from samkit.metrics import semantic_miou

TINY_TEXT_FIT = {"steps": 1, "batch": 1, "data": {"kind": "shapescenes", "split": "train", "classes": "all",
                                                  "n": 2, "seed": 7, "size": 64}}


def build(variant: str) -> SSPrompt:
    """A small SSPrompt on TinySAM with random weights (nothing is cached on disk for unknown weights)."""
    torch.manual_seed(0)
    return SSPrompt(train={"kind": "shapescenes", "split": "train", "classes": "all", "n": 6, "seed": 2, "size": 64},
                    test={"kind": "shapescenes", "split": "val", "classes": "all", "n": 2, "seed": 2, "size": 64},
                    variant=variant, shots=1, spatial_points=4, checkpoint="random", text_prompts=TINY_TEXT_FIT)


@pytest.fixture(scope="module")
def method() -> SSPrompt:
    return build("ssprompt")


# ---- Eq. 4 / Eq. 6 -------------------------------------------------------------------------------
def test_fusion_is_the_default_at_w0_and_the_learned_embedding_at_w1():
    default, learned = torch.randn(5, 256), torch.randn(5, 256)
    assert torch.equal(fuse(default, learned, torch.zeros(5)), default)
    assert torch.equal(fuse(default, learned, torch.ones(5)), learned)
    mixed = fuse(default, learned, torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0]))
    assert torch.equal(mixed[0], default[0]) and torch.equal(mixed[1], learned[1])
    assert torch.allclose(mixed[2], (default[2] + learned[2]) / 2)


def test_prompt_fusion_module_at_the_ends_of_its_weights():
    default = torch.randn(4, 256)
    fusion = PromptFusion(default, "weighted", embedding_init="random")
    with torch.no_grad():
        fusion.weight_logits.fill_(-float("inf"))  # w = sigmoid(-inf) = 0
    assert torch.equal(fusion(default), default)
    with torch.no_grad():
        fusion.weight_logits.fill_(float("inf"))  # w = 1
    assert torch.equal(fusion(default), fusion.learned)
    average = PromptFusion(default, "average", embedding_init="random")
    assert torch.allclose(average.weights(), torch.full((4,), 0.5))
    assert [n for n, p in average.named_parameters()] == ["learned"]  # w is fixed, not trained
    assert torch.equal(PromptFusion(default, "fixed")(default), default)
    # Learnable embeddings start as the defaults: every variant starts from the default prediction.
    assert torch.equal(PromptFusion(default, "weighted")(default), default)


def test_fusion_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="weights"):
        fuse(torch.zeros(3, 8), torch.zeros(3, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="mode"):
        PromptFusion(torch.zeros(3, 8), "sometimes")


# ---- what trains ----------------------------------------------------------------------------------
def _gradients_after_one_step(model: SSPrompt) -> dict[str, bool]:
    """Which parameters get a non-zero gradient from one training step's loss."""
    model.zero_grad(set_to_none=True)
    batch = [model.train_sample(i, np.random.default_rng(i)) for i in range(min(2, len(model)))]
    loss, logs = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= logs["pixel_accuracy"] <= 1.0
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def test_only_prompt_embeddings_and_weights_receive_gradients(method):
    prompts = {"semantic.learned", "semantic.weight_logits", "spatial.learned", "spatial.weight_logits"}
    # At the start the learned embeddings equal the defaults, so d loss / d w = <g, z_hat - z> is 0:
    # only the embeddings get a gradient. Once they have moved, the weights get one too.
    at_start = _gradients_after_one_step(method)
    assert {name for name, has in at_start.items() if has} == {"semantic.learned", "spatial.learned"}
    with torch.no_grad():
        for fusion in (method.semantic, method.spatial):
            fusion.learned.add_(0.5 * torch.randn_like(fusion.learned))
    moved = _gradients_after_one_step(method)
    assert {name for name, has in moved.items() if has} == prompts
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    assert trainable == prompts  # SAM (image encoder, prompt encoder, decoder) is frozen
    assert all(p.grad is None for name, p in method.named_parameters() if name not in prompts)
    assert method.semantic.learned.shape == (15, 256) and method.spatial.learned.shape == (4, 256)


def test_vspl_trains_only_the_click_coordinates():
    vspl = build("vspl")
    got = _gradients_after_one_step(vspl)
    assert {name for name, has in got.items() if has} == {"clicks.logits"}
    assert vspl.click_positions().shape == (4, 2)
    assert ((vspl.click_positions() > 0) & (vspl.click_positions() < 1)).all()


def test_default_variant_has_nothing_to_train():
    assert not [p for p in build("default").parameters() if p.requires_grad]


# ---- shapes ---------------------------------------------------------------------------------------
def test_semantic_head_decodes_every_class_of_every_image_in_one_call(method):
    images = [method.test_data.item(i)[0] for i in range(2)]
    embedding, _ = method.images.embed(images)
    spatial = torch.stack([method.spatial_prompts(size) for size in embedding.input_sizes])
    assert spatial.shape == (2, 4 + 1, 256)  # 4 clicks and SAM's padding token
    calls = []
    original = method.adapter.decode
    method.adapter.decode = lambda *args, **kwargs: calls.append(args[1].shape) or original(*args, **kwargs)
    try:
        logits = class_mask_logits(method.adapter, embedding, method.semantic_default, spatial)
    finally:
        method.adapter.decode = original
    assert calls == [(2 * 15, 1 + 5, 256)]  # one batched decoder call: B * C prompt sets
    assert logits.shape == (2, 15, 64, 64)
    predictions = method.predict(images)
    assert [p.shape for p in predictions] == [(64, 64), (64, 64)]
    assert all(p.min() >= 0 and p.max() < 15 for p in predictions)


def test_evaluate_reports_miou_and_the_weights(method):
    result = method.evaluate()
    assert set(result) == {"miou", "miou_foreground", "miou_background"} | {f"iou_{c}" for c in method.class_names}
    assert 0.0 <= result["miou"] <= 1.0
    assert set(method.last_class_iou) == set(method.class_names)
    per_class = np.array([result[f"iou_{c}"] for c in method.class_names])
    assert np.allclose(per_class, [method.last_class_iou[c] for c in method.class_names], equal_nan=True)
    assert np.isclose(result["miou"], np.nanmean(per_class))
    weights = method.semantic_weights()
    assert list(weights) == list(method.class_names) and all(0 <= w <= 1 for w in weights.values())
    assert method.spatial_weights().shape == (4,)


# ---- data helpers and metrics ---------------------------------------------------------------------
def test_point_grid_is_square_and_inside():
    grid = point_grid(9)
    assert grid.shape == (9, 2) and np.allclose(sorted(set(grid[:, 0])), [1 / 6, 1 / 2, 5 / 6])
    with pytest.raises(ValueError, match="spatial_points"):
        point_grid(10)


def test_few_shot_selection_covers_each_class():
    rng = np.random.default_rng(0)
    present = [set(rng.choice(6, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(40)]
    chosen = few_shot_indices(present, 7, shots=3, seed=1)  # class 6 never occurs
    for c in range(7):
        available = sum(c in p for p in present)
        assert sum(c in present[i] for i in chosen) >= min(3, available)
    assert chosen == sorted(set(chosen)) and chosen == few_shot_indices(present, 7, shots=3, seed=1)


def test_labels_on_grid_pads_like_the_image():
    labels = np.zeros((32, 64), dtype=np.int64)  # a wide image: SAM pads the bottom half
    grid = labels_on_grid(labels, (128, 256), 256, (64, 64))
    assert grid.shape == (64, 64)
    assert (grid[:32] == 0).all() and (grid[32:] == IGNORE).all()


def test_class_iou_matches_semantic_miou():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 5, size=(2, 50, 50)), rng.integers(0, 5, size=(2, 50, 50))
    truth[0, :5] = IGNORE
    iou = class_iou(confusion_matrix(predicted, truth, 5))
    assert np.isclose(np.nanmean(iou), semantic_miou(predicted, truth, 5, ignore_index=IGNORE))


def test_bad_variant_is_named():
    with pytest.raises(ValueError, match="variant"):
        SSPrompt(train={"kind": "shapescenes"}, test={"kind": "shapescenes"}, variant="coop")


# ---- the text prompt encoder's cache --------------------------------------------------------------
def test_text_prompt_projection_is_fitted_once_then_read_from_the_cache(monkeypatch):
    import samkit
    from samkit.checkpoints import cache_dir

    adapter = samkit.load_model("tinysam", device="cpu")
    grid = point_grid(4)
    fits = []
    real_fit = ssprompt.fit_text_prompts
    monkeypatch.setattr(ssprompt, "fit_text_prompts", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    first = ssprompt.default_semantic_prompts(adapter, ["crab", "sand"], grid, TINY_TEXT_FIT)
    second = ssprompt.default_semantic_prompts(adapter, ["crab", "sand"], grid, TINY_TEXT_FIT)
    assert fits == [1] and torch.equal(first, second) and first.shape == (2, 256)
    path = next((cache_dir() / "text_prompts").glob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="fitting it again"):
        third = ssprompt.default_semantic_prompts(adapter, ["crab", "sand"], grid, TINY_TEXT_FIT)
    assert fits == [1, 1] and torch.allclose(first, third)  # the same seed fits the same projection


# ---- the full recipe's folder reader ---------------------------------------------------------------
def test_semantic_folder_reads_cityscapes_and_ade20k_layouts(tmp_path):
    from PIL import Image

    from samkit.datasets.semantic import CITYSCAPES_CLASSES, SemanticFolder
    from samkit.datasets.specs import semantic_data

    train_ids = np.full((16, 32), 255, dtype=np.uint8)
    train_ids[:8] = 0  # road
    train_ids[8:, :16] = 13  # car
    city = tmp_path / "cityscapes"
    for folder in ("leftImg8bit/train/aachen", "gtFine/train/aachen"):
        (city / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 32, 3), dtype=np.uint8)).save(city / "leftImg8bit/train/aachen/a_000001_leftImg8bit.png")
    Image.fromarray(train_ids).save(city / "gtFine/train/aachen/a_000001_gtFine_labelTrainIds.png")
    data = semantic_data({"kind": "semantic_folder", "root": str(city), "layout": "cityscapes", "split": "train"},
                         short_side=8)
    assert data.class_names == CITYSCAPES_CLASSES and "road" in data.stuff_classes and "car" not in data.stuff_classes
    image, labels = data.item(0)
    assert image.shape == (8, 16, 3) and labels.shape == (8, 16)  # shorter side resized to 8
    assert set(np.unique(labels)) == {IGNORE, 0, 13} and data.classes_in(0) == {0, 13}

    ade = tmp_path / "ADEChallengeData2016"
    for folder in ("images/training", "annotations/training"):
        (ade / folder).mkdir(parents=True)
    (ade / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n2\t0.1\t1\t1\tbuilding, edifice\n")
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(ade / "images/training/x.jpg")
    Image.fromarray(np.array([[0, 1], [2, 2]], dtype=np.uint8).repeat(2, 0).repeat(2, 1)).save(ade / "annotations/training/x.png")
    reader = SemanticFolder(ade, layout="ade20k", split="training")
    assert reader.vocabulary == ("background", "wall", "building")
    assert reader.class_names_of(0) == frozenset({"wall", "building"})
    with pytest.raises(ValueError, match="layout"):
        SemanticFolder(ade, layout="kitti")


def test_learned_scale_multiplies_the_learned_embeddings_step_under_adam():
    default = torch.randn(3, 256)
    moved = {}
    for scale in (1.0, 2.0):
        fusion = PromptFusion(default, "average", embedding_init="default", learned_scale=scale)
        assert torch.allclose(fusion(default), default)  # the same start whatever the scale
        optimizer = torch.optim.Adam(fusion.parameters(), lr=1e-2)
        fusion(default).sum().backward()
        optimizer.step()
        moved[scale] = (fusion.learned_embeddings() - default).abs().mean().item()
    assert moved[2.0] == pytest.approx(2 * moved[1.0], rel=1e-4)
    with pytest.raises(ValueError, match="learned_scale"):
        PromptFusion(default, "average", learned_scale=0)


def test_low_rank_clicks_train_two_numbers_per_click_off_the_manifold():
    method = build("spaprompt_lowrank")
    trainable = {name: p.shape for name, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"lowrank.offsets": (4, 2)}  # like VSPL: 2 numbers per click
    planes = method.lowrank.planes
    gram = planes @ planes.transpose(1, 2) / planes[0, 0].norm() ** 2
    assert torch.allclose(gram, torch.eye(2).expand(4, 2, 2), atol=1e-5)  # two orthogonal directions per click
    size = method.images.embed(method.train_data.item(method.train_indices[0])[0])[0].input_sizes[0]
    assert torch.equal(method.spatial_prompts(size), method.default_clicks(size))  # starts at the defaults
    with torch.no_grad():
        method.lowrank.offsets.fill_(1.0)
    assert not torch.equal(method.spatial_prompts(size)[:4], method.default_clicks(size)[:4])


def test_class_balanced_weights_are_inverse_pixel_frequency():
    torch.manual_seed(0)
    scenes = {"kind": "shapescenes", "classes": "all", "seed": 2, "size": 64}
    balanced = SSPrompt(train={**scenes, "split": "train", "n": 6}, test={**scenes, "split": "val", "n": 2},
                        variant="semprompt", shots=1, spatial_points=4, checkpoint="random",
                        text_prompts=TINY_TEXT_FIT, class_balanced=True)
    counts = np.zeros(15)
    for index in balanced.train_indices:
        labels = balanced.train_data.item(index)[1]
        counts += np.bincount(labels[labels >= 0], minlength=15)
    weights = balanced.class_weights.numpy()
    seen = counts > 0
    assert np.allclose(weights[seen] * counts[seen], (weights[seen] * counts[seen])[0], rtol=1e-4)
    assert weights[seen].mean() == pytest.approx(1.0) and (weights[~seen] == 0).all()
    assert build("semprompt").class_weights is None


def test_spatial_embedding_init_sets_the_clicks_start_apart_from_the_classes():
    torch.manual_seed(0)
    scenes = {"kind": "shapescenes", "classes": "all", "seed": 2, "size": 64}
    method = SSPrompt(train={**scenes, "split": "train", "n": 6}, test={**scenes, "split": "val", "n": 2},
                      variant="ssprompt", shots=1, spatial_points=4, checkpoint="random", text_prompts=TINY_TEXT_FIT,
                      embedding_init="random", spatial_embedding_init="default")
    size = method.images.embed(method.train_data.item(method.train_indices[0])[0])[0].input_sizes[0]
    assert torch.allclose(method.spatial_prompts(size), method.default_clicks(size))  # clicks start at the defaults
    assert not torch.allclose(method.semantic(method.semantic_default), method.semantic_default)  # classes at random
    with pytest.raises(ValueError, match="spatial_embedding_init"):
        SSPrompt(train={**scenes, "split": "train", "n": 6}, test={**scenes, "split": "val", "n": 2},
                 variant="ssprompt", shots=1, spatial_points=4, checkpoint="random", text_prompts=TINY_TEXT_FIT,
                 spatial_embedding_init="zeros")
