"""OpenWorldSAM's language adapter: query collapse without tie-breakers, Hungarian matching, what trains.

A stand-in text encoder (fixed random vectors) spares these tests sentence-transformers' slow import
(tests/test_text.py covers the real one); TinySAM has random weights. Nothing here depends on training.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from samkit.methods import openworld
from samkit.methods.openworld import (
    LanguageAdapter,
    OpenWorld,
    distinct_masks,
    hungarian_match,
    low_res_targets,
    mask_nms,
    matched_mask_loss,
    select_instances,
    semantic_merge,
)

TEXT_DIM = 32
SCENES = {"kind": "shapescenes", "split": "train", "classes": "base", "n": 4, "seed": 2}


class FakeTextEncoder:
    """Deterministic random unit vectors per text, the interface of samkit.models.text.TextEncoder."""

    def __init__(self, name: str = "fake", device="cpu"):
        self.name, self.dim = name, TEXT_DIM

    def encode(self, texts):
        vectors = [torch.randn(TEXT_DIM, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts]
        return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)


@pytest.fixture
def method(monkeypatch) -> OpenWorld:
    monkeypatch.setattr(openworld, "TextEncoder", FakeTextEncoder)
    torch.manual_seed(0)
    return OpenWorld(train=SCENES, eval_base=SCENES, checkpoint="random", num_queries=6, queries_per_image=2)


# ---- the collapse: identical queries stay identical without tie-breakers -----------------------

@pytest.mark.parametrize("layers", [0, 3])
def test_without_tie_breakers_the_k_queries_are_identical(layers):
    torch.manual_seed(0)
    adapter = LanguageAdapter(TEXT_DIM, num_queries=5, tie_breakers=False, soft_prompt_layers=layers).eval()
    tokens = adapter(torch.randn(2, TEXT_DIM), torch.randn(2, 256, 4, 4))
    assert tokens.shape == (2, 5, 256)
    assert torch.equal(tokens, tokens[:, :1].expand_as(tokens))  # self-attention cannot split equal inputs
    with_breakers = LanguageAdapter(TEXT_DIM, num_queries=5, tie_breakers=True, soft_prompt_layers=layers).eval()
    split = with_breakers(torch.randn(2, TEXT_DIM), torch.randn(2, 256, 4, 4))
    assert not torch.allclose(split[:, 0], split[:, 1])  # Eq. (1): q_i = u + t_i differ


def test_without_tie_breakers_the_k_masks_are_identical(monkeypatch):
    monkeypatch.setattr(openworld, "TextEncoder", FakeTextEncoder)
    torch.manual_seed(0)
    method = OpenWorld(train=SCENES, checkpoint="random", num_queries=4, tie_breakers=False).eval()
    image = method.train_data[0].image
    outputs = method.predict(image, ["crab", "kelp"])
    for output in outputs:
        assert output.logits.shape == (4, *image.shape[:2])
        assert torch.equal(output.logits, output.logits[:1].expand_as(output.logits))
        assert torch.equal(output.scores, output.scores[:1].expand_as(output.scores))
        assert distinct_masks(output.masks) <= 1


# ---- Hungarian matching ---------------------------------------------------------------------------

def _brute_force(cost: np.ndarray) -> float:
    rows, cols = cost.shape
    if rows >= cols:
        return min(sum(cost[r, c] for c, r in enumerate(perm)) for perm in itertools.permutations(range(rows), cols))
    return min(sum(cost[r, c] for r, c in enumerate(perm)) for perm in itertools.permutations(range(cols), rows))


def test_hungarian_matching_is_optimal_on_a_hand_made_cost_matrix():
    # Greedy takes the 0 at (1, 1) first and ends at 0 + 3 + 3 = 6 (or worse); the optimum is 5.
    cost = np.array([[4.0, 1.0, 3.0],
                     [2.0, 0.0, 5.0],
                     [3.0, 2.0, 2.0]])
    rows, cols = hungarian_match(cost)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0), (2, 2)]
    assert cost[rows, cols].sum() == 5.0 == _brute_force(cost)


def test_hungarian_matching_with_more_predictions_than_targets():
    cost = torch.tensor([[0.9, 0.8], [0.1, 0.7], [0.2, 0.05], [0.3, 0.3]])  # K = 4 masks, G = 2 instances
    rows, cols = hungarian_match(cost)
    assert len(rows) == 2 and len(set(rows.tolist())) == 2 and sorted(cols.tolist()) == [0, 1]
    assert float(cost[rows, cols].sum()) == pytest.approx(_brute_force(cost.numpy()))
    with pytest.raises(ValueError, match="cost: expected"):
        hungarian_match(np.array([[0.0, np.nan]]))


def test_the_matched_loss_does_not_depend_on_the_order_of_the_k_masks():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 8, 8), (torch.rand(2, 8, 8) > 0.5).float()
    loss, _ = matched_mask_loss(logits, targets, dice_weight=1.0)
    shuffled, _ = matched_mask_loss(logits[torch.randperm(5)], targets, dice_weight=1.0)
    assert torch.allclose(loss, shuffled)
    # A perfect mask for each target (others anywhere) beats the random ones.
    perfect = torch.cat([(targets * 2 - 1) * 20, logits[2:]])
    assert matched_mask_loss(perfect, targets, dice_weight=1.0)[0] < loss


# ---- what trains ----------------------------------------------------------------------------------

def test_only_adapter_parameters_receive_gradients(method):
    rng = np.random.default_rng(0)
    batch = [method.train_sample(0, rng), method.train_sample(1, rng)]
    loss, _ = method(batch)
    loss.backward()
    with_grad = {name for name, p in method.named_parameters() if p.grad is not None}
    adapter = {f"adapter.{name}" for name, _ in method.adapter.named_parameters()}
    assert with_grad == adapter  # every adapter weight (tie-breakers included), nothing else
    assert all(not p.requires_grad for p in method.sam.parameters())
    # The residual branches start at zero (so their inner weights get zero gradients at step 0);
    # the tie-breakers, the projector and those branches' output layers do move.
    moving = [method.adapter.tie_breakers, method.adapter.projector[1].weight, method.adapter.layers[0].mlp[-1].weight]
    assert all(p.grad.abs().sum() > 0 for p in moving)


def test_two_decoder_calls_per_batch_and_one_encoder_run_per_image(method, monkeypatch):
    calls = []
    decode = method.sam_adapter.decode

    def counting_decode(embedding, sparse, dense=None, multimask=True):
        calls.append(tuple(sparse.shape))
        return decode(embedding, sparse, dense, multimask)

    monkeypatch.setattr(method.sam_adapter, "decode", counting_decode)
    rng = np.random.default_rng(0)
    batch = [method.train_sample(0, rng), method.train_sample(1, rng)]
    queries = sum(len(sample["classes"]) for sample in batch)
    targets = sum(min(6, len(masks)) for sample in batch for masks in sample["masks"])
    method(batch)
    method(batch)  # the second pass reads the cached embeddings
    # All K queries of all class queries at once (matching), then the matched ones (the loss).
    assert calls == [(queries * 6, 1, 256), (targets, 1, 256)] * 2
    assert method.encoder.encoder_calls == 2


def test_train_samples_name_present_classes_with_their_masks(method):
    sample = method.train_sample(0, np.random.default_rng(1))
    assert 1 <= len(sample["classes"]) <= 2
    for name, masks in zip(sample["classes"], sample["masks"]):
        assert masks.ndim == 3 and masks.dtype == bool and masks.any(axis=(1, 2)).all()
        assert name in openworld.VOCABULARY


# ---- inference helpers ----------------------------------------------------------------------------

def _square(top: int, left: int, side: int = 4, size: int = 12) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_score_threshold_and_nms_keep_one_mask_per_instance():
    a, a_shifted, b = _square(0, 0), _square(0, 1), _square(6, 6)
    masks = torch.as_tensor(np.stack([a, a_shifted, b, b, np.zeros_like(a)]))
    scores = torch.tensor([0.8, 0.9, 0.75, 0.6, 0.95])  # the empty mask and the 0.6 one are dropped
    kept = select_instances(masks, scores, score_threshold=0.7, nms_iou=0.5)
    assert kept.tolist() == [1, 2]  # a_shifted (IoU 0.6 with a) wins over a; b once
    assert mask_nms(masks[:3], scores[:3], 0.7).tolist() == [1, 0, 2]  # IoU 0.6 < 0.7: both kept
    assert distinct_masks(masks) == 2


def test_semantic_merge_takes_the_most_confident_class_per_pixel():
    probabilities = torch.tensor([[[0.9, 0.1]], [[0.2, 0.3]]])  # 2 classes, a 1 x 2 image
    assert semantic_merge(probabilities, [7, 3]).tolist() == [[7, 3]]


def test_low_res_targets_follow_the_encoder_frame():
    masks = np.zeros((1, 100, 200), bool)
    masks[0, :, :100] = True  # the left half
    target = low_res_targets(masks, (128, 256), 256, (64, 64), torch.device("cpu"))
    assert target.shape == (1, 64, 64)
    assert target[0, :32, :32].min() > 0.95 and target[0, :, 33:].max() < 0.01 and target[0, 33:].max() < 0.01


def test_bad_arguments_are_refused(monkeypatch):
    monkeypatch.setattr(openworld, "TextEncoder", FakeTextEncoder)
    with pytest.raises(ValueError, match="prompt_template: expected"):
        OpenWorld(train=SCENES, checkpoint="random", prompt_template="a crab")
    with pytest.raises(ValueError, match="positions: expected"):
        OpenWorld(train=SCENES, checkpoint="random", positions="learned")
    with pytest.raises(ValueError, match="tie_breaker_init: expected"):
        OpenWorld(train=SCENES, checkpoint="random", tie_breaker_init="zeros")
    with pytest.raises(ValueError, match="soft_prompt_layers: expected"):
        LanguageAdapter(TEXT_DIM, soft_prompt_layers=-1)


def test_grid_tie_breakers_are_sams_click_tokens_and_their_control_keeps_only_the_norm(monkeypatch):
    monkeypatch.setattr(openworld, "TextEncoder", FakeTextEncoder)
    torch.manual_seed(0)
    grid = OpenWorld(train=SCENES, checkpoint="random", num_queries=20, tie_breaker_init="grid")
    frame = grid.sam_adapter.image_size
    # K = 20: 4 rows x 5 columns, row by row; query 6 is row 1, column 1.
    point = torch.tensor([[[1.5 * frame / 5, 1.5 * frame / 4]]])
    click, _ = grid.sam_adapter.prompt_tokens(points=point, labels=torch.ones(1, 1))
    assert torch.allclose(grid.adapter.tie_breakers[6], click[0, 0], atol=1e-5)
    assert len({tuple(t.round(decimals=4).tolist()) for t in grid.adapter.tie_breakers}) == 20  # all distinct
    control = OpenWorld(train=SCENES, checkpoint="random", num_queries=20, tie_breaker_init="random_norm")
    its_grid = control.grid_click_tokens(20)  # (random TinySAM weights differ between the two instances)
    assert torch.allclose(control.adapter.tie_breakers.norm(dim=1), its_grid.norm(dim=1), atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(control.adapter.tie_breakers, its_grid, dim=1)
    assert cosine.abs().max() < 0.5  # random directions, not the grid's
    assert grid.adapter.tie_breakers.requires_grad  # still learned


def test_recall_at_k_and_multi_instance_coverage_count_hits_of_the_raw_k_masks(method, monkeypatch):
    # A stand-in model whose K = 3 masks per query are: the query's first instance, its second (or
    # nothing), nothing. Scores are low, so the paper's 0.7 filter keeps none: recall@K must not care.
    data = method.train_data

    def predict(image, class_names):
        sample = next(s for s in (data[i] for i in range(len(data))) if np.array_equal(s.image, image))
        targets = openworld.class_targets(sample, openworld.stuff_classes_of(data))
        outputs = []
        for name in class_names:
            truth = targets.get(name, np.zeros((0, *image.shape[:2]), bool))
            masks = np.zeros((3, *image.shape[:2]), bool)
            masks[:min(2, len(truth))] = truth[:2]
            logits = torch.as_tensor(np.where(masks, 10.0, -10.0), dtype=torch.float32)
            outputs.append(openworld.QueryOutput(name, logits, torch.full((3,), 0.1), 0.0))
        return outputs

    monkeypatch.setattr(method, "predict", predict)
    result = method.evaluate_on(data, "oracle")
    things = result.queries[result.queries["instances"] > 0]
    assert (things["recalled_at_k"] == things["instances"].clip(upper=2)).all()
    assert result.metrics["recall_at_k"] == pytest.approx(things["instances"].clip(upper=2).sum() / things["instances"].sum())
    multi = things[things["instances"] >= 2]
    assert len(multi) and result.metrics["multi_instance_coverage"] == 1.0
    assert result.metrics["instance_recall"] == 0.0  # the score filter dropped every mask


# ---- the two-pass training step -------------------------------------------------------------------

def _one_pass_loss(method, batch):
    """The step's loss the plain way: all K x Q queries decoded with gradients, matched, then the loss."""
    embedding = method.encoder.embed([sample["image"] for sample in batch])[0]
    rows = [b for b, sample in enumerate(batch) for _ in sample["classes"]]
    names = [name for sample in batch for name in sample["classes"]]
    low_res, _ = method.decode_queries(embedding, rows, method.query_tokens(embedding, rows, names))
    losses = [[] for _ in batch]
    for query, (row, masks) in enumerate(zip(rows, [m for sample in batch for m in sample["masks"]])):
        goal = low_res_targets(masks, embedding.input_sizes[row], method.sam_adapter.image_size,
                               low_res.shape[-2:], low_res.device)
        losses[row].append(matched_mask_loss(low_res[query], goal, **method.loss_weights)[0])
    return sum(torch.stack(per_sample).mean() for per_sample in losses) / len(batch)


@pytest.mark.parametrize("tie_breakers, layers", [(True, 0), (True, 2), (False, 0)])
def test_the_two_pass_step_gives_the_one_pass_loss_and_gradient(monkeypatch, tie_breakers, layers):
    # The step decodes all queries without gradients to match them, then only the matched ones with
    # gradients: the same loss and the same gradient as decoding everything with gradients.
    monkeypatch.setattr(openworld, "TextEncoder", FakeTextEncoder)
    torch.manual_seed(0)
    method = OpenWorld(train=SCENES, checkpoint="random", num_queries=6, queries_per_image=2, dropout=0.0,
                       tie_breakers=tie_breakers, soft_prompt_layers=layers, dice_weight=1.0)
    for parameter in method.adapter.parameters():  # away from the zero-initialised residual branches
        torch.nn.init.normal_(parameter, std=0.05) if parameter.ndim > 1 else None
    rng = np.random.default_rng(0)
    batch = [method.train_sample(0, rng), method.train_sample(1, rng)]
    assert sum(len(m) for sample in batch for m in sample["masks"]) < 2 * 6  # fewer matched than decoded
    loss, _ = method(batch)
    loss.backward()
    two_pass = {name: p.grad.clone() for name, p in method.adapter.named_parameters() if p.grad is not None}
    method.zero_grad()
    reference = _one_pass_loss(method, batch)
    reference.backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-4)
    assert two_pass.keys() == {name for name, p in method.adapter.named_parameters() if p.grad is not None}
    for name, parameter in method.adapter.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(two_pass[name], parameter.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_unmatched_weight_trains_the_unmatched_queries_towards_empty(monkeypatch):
    monkeypatch.setattr(openworld, "TextEncoder", FakeTextEncoder)
    torch.manual_seed(0)
    kwargs = dict(train=SCENES, checkpoint="random", num_queries=6, queries_per_image=1, soft_prompt_layers=0)
    batch = [OpenWorld(**kwargs).train_sample(0, np.random.default_rng(0))]
    losses = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        method = OpenWorld(**kwargs, unmatched_weight=weight)
        losses[weight] = float(method(batch)[0].detach())
    assert losses[1.0] > losses[0.0]  # the free queries' masks are not empty, so they add a loss
    with pytest.raises(ValueError, match="unmatched_weight"):
        matched_mask_loss(torch.zeros(1, 4, 4), torch.ones(1, 4, 4), unmatched_weight=1.0,
                          assignment=(np.array([0]), np.array([0])))
