"""CPC-SAM: CaPL's shapes, the calibration seam, a loss that decreases, and the bi-level alternation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samkit.methods.cpc import (
    CausalPromptCalibration,
    EntityCausalModule,
    TaskCausalModule,
    calibrated,
)

SCENES = {"kind": "shapescenes", "size": 64, "seed": 5}


def make_cpc(variant: str = "causal", **changes) -> CausalPromptCalibration:
    torch.manual_seed(0)
    return CausalPromptCalibration(
        train={**SCENES, "split": "train", "classes": "base", "n": 4},
        eval_base={**SCENES, "split": "val", "classes": "base", "n": 2},
        variant=variant, instances_per_image=2, lora_rank=2, device="cpu", **changes)


def batch_of(method: CausalPromptCalibration, n: int = 2) -> list[dict]:
    return [method.train_sample(i, np.random.default_rng(i)) for i in range(n)]


def test_task_module_starts_as_the_identity_and_keeps_shapes():
    module = TaskCausalModule(256)
    tokens = torch.randn(3, 2, 256)
    assert torch.equal(module(tokens), tokens)
    torch.nn.init.normal_(module.mlp[-1].weight)
    reweighted = module(tokens)
    assert reweighted.shape == tokens.shape and not torch.equal(reweighted, tokens)
    ratio = reweighted / tokens
    assert (ratio >= 0).all() and (ratio <= 2).all()  # weights in [0, 2]: a re-weighting, not a new token


def test_entity_module_gives_one_xi_per_cross_attention_with_zero_rows_for_output_tokens():
    module = EntityCausalModule(attentions=5, dim=256, rank=4)
    torch.nn.init.normal_(module.token_maps[0].weight)
    xis = module(torch.randn(3, 2, 256), torch.randn(3, 256, 4, 4), output_tokens=5)
    assert len(xis) == 5 and all(xi.shape == (3, 7, 16) for xi in xis)
    assert torch.equal(xis[0][:, :5], torch.zeros(3, 5, 16)) and xis[0][:, 5:].abs().sum() > 0
    assert all(torch.equal(xi, torch.zeros_like(xi)) for xi in xis[1:])  # zero-initialised: SAM's attention


def test_zero_calibration_leaves_the_decoder_unchanged_and_the_modules_are_restored():
    method = make_cpc()
    places = method.adapter.decoder_cross_attentions()
    before = [getattr(owner, name) for owner, name, _ in places]
    sample = batch_of(method, 1)[0]
    embedding = method.embed([sample["image"]])
    sparse, dense = method.adapter.prompt_tokens(boxes=sample["boxes"][0], original_size=sample["image"].shape[:2])
    plain, _ = method.adapter.decode(embedding, sparse, dense, multimask=False)
    rows = len(sparse)
    xis = [torch.zeros(rows, 5 + sparse.shape[1], embedding.image_embed[0, 0].numel()) for _ in before]
    with calibrated(method.adapter, xis) as final:
        calibrated_out, _ = method.adapter.decode(embedding, sparse, dense, multimask=False)
        assert final.weights is not None
    torch.testing.assert_close(calibrated_out, plain, rtol=1e-5, atol=1e-5)
    assert [getattr(owner, name) for owner, name, _ in places] == before
    xis[0][:, 5:] = 5.0 * torch.randn_like(xis[0][:, 5:])
    with calibrated(method.adapter, xis):
        shifted, _ = method.adapter.decode(embedding, sparse, dense, multimask=False)
    assert not torch.allclose(shifted, plain, atol=1e-3)  # the calibration reaches the masks


def test_capl_loss_decreases_on_a_fixed_batch():
    method = make_cpc()
    batch = batch_of(method)
    capl = [p for n, p in method.named_parameters() if n in method.capl_names]
    optimizer = torch.optim.Adam(capl, lr=1e-3)
    method.global_step = 0  # a CaPL step: the loss is L_task + L_entity
    losses = []
    for _ in range(12):
        loss, _ = method(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses


@pytest.mark.parametrize("step", [0, 1])
def test_bilevel_steps_move_only_their_level(step):
    method = make_cpc()
    method.global_step = step
    loss, _ = method(batch_of(method))
    loss.backward()
    method.before_optimizer_step()
    with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
    lora = {n for n, p in method.named_parameters() if p.requires_grad and "lora_" in n}
    assert lora and method.capl_names and not (lora & method.capl_names)
    if step == 0:  # CaPL's level (Eq. 4, lower)
        assert with_grad == method.capl_names
    else:  # SAM's level (Eq. 4, upper): LoRA only
        assert with_grad == lora
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    assert not (with_grad & frozen)


def test_variants_have_the_parameters_they_name():
    assert make_cpc("fixed").capl_names == set()
    assert make_cpc("task").capl_names and all(n.startswith("task_module") for n in make_cpc("task").capl_names)
    assert make_cpc("learnable").learned_token is not None
    with pytest.raises(ValueError, match="variant"):
        make_cpc("magic")


# ---- the paper's two stages (App. D, F.4) ----------------------------------------------------------

def train_steps(method: CausalPromptCalibration, steps: int) -> dict[int, set[str]]:
    """Run `steps` optimiser steps the way the trainer does; the parameters that moved at each step."""
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    batch, moved = batch_of(method), {}
    for step in range(steps):
        before = {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
        method.global_step = step
        loss, _ = method(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step()
        optimizer.step()
        moved[step] = {n for n, p in method.named_parameters() if n in before and not torch.equal(p, before[n])}
    return moved


@pytest.mark.parametrize("variant", ["causal", "task"])
def test_two_stage_schedule_moves_capl_with_sam_fixed_then_sam_with_capl_locked(variant):
    method = make_cpc(variant, schedule="two_stage", capl_steps=2, lora_parts=["mask_decoder"])
    lora = {n for n, p in method.named_parameters() if p.requires_grad and "lora_" in n}
    moved = train_steps(method, 4)
    assert lora and method.capl_names
    assert moved[0] == moved[1] == method.capl_names  # stage 1: CaPL only, SAM (LoRA) fixed
    assert moved[2] == moved[3] == lora  # stage 2: LoRA only, CaPL locked (Adam's momentum and decay too)


def test_two_stage_needs_a_stage_one_and_schedules_are_named():
    with pytest.raises(ValueError, match="capl_steps"):
        make_cpc(schedule="two_stage")
    with pytest.raises(ValueError, match="schedule"):
        make_cpc(schedule="bilevel")


# ---- a confounder built on purpose -----------------------------------------------------------------

def test_confounded_sets_stretch_the_side_their_environment_maps_the_background_to():
    from samkit.datasets.confounded_boxes import ENVIRONMENTS, SIDES, background_of
    from samkit.prompts import tight_box

    method = make_cpc(prompt_draw="confounded", environments=[0, 1])
    for index in range(4):
        sample = method.train_sample(index, np.random.default_rng(index))
        scene = method.train_data[index]
        for k, mask in enumerate(sample["masks"]):
            tight, factor = tight_box(mask), background_of(mask, scene.semantic)
            for environment, boxes in zip((0, 1), sample["boxes"]):
                moved = np.flatnonzero(np.abs(boxes[k] - tight) > 1e-3)
                side = SIDES.index(ENVIRONMENTS[environment][factor])
                assert set(moved) <= {side}  # only that side; at the image border it cannot move
                if moved.size:
                    assert (boxes[k][side] - tight[side]) * (1 if side >= 2 else -1) > 0  # outward


def test_environments_disagree_and_the_test_environment_is_new_for_every_background():
    from samkit.datasets.confounded_boxes import ENVIRONMENTS, TEST_ENVIRONMENT

    training = [e for k, e in enumerate(ENVIRONMENTS) if k != TEST_ENVIRONMENT]
    for background in range(3):
        sides = [e[background] for e in training]
        assert len(set(sides)) == len(sides)  # the factor -> side rule differs between environments
        assert ENVIRONMENTS[TEST_ENVIRONMENT][background] not in sides


def test_one_environment_draw_repeats_the_rule_and_bad_draws_are_named():
    from samkit.datasets.confounded_boxes import confounded_box, stretched_box
    from samkit.prompts import tight_box

    method = make_cpc(prompt_draw="confounded", environments=[1])  # both sets in environment 1
    sample = method.train_sample(0, np.random.default_rng(0))
    assert sample["boxes"].shape == (2, len(sample["masks"]), 4)
    for k, mask in enumerate(sample["masks"]):
        moved = [set(np.flatnonzero(np.abs(boxes[k] - tight_box(mask)) > 1e-3)) for boxes in sample["boxes"]]
        assert moved[0] == moved[1] or not (moved[0] and moved[1])  # one rule: the same side in both sets
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    with pytest.raises(ValueError, match="environment"):
        confounded_box(mask, np.zeros((8, 8), np.int16), 7, np.random.default_rng(0))
    with pytest.raises(ValueError, match="side"):
        stretched_box(mask, "up", 0.5)
    with pytest.raises(ValueError, match="environments"):
        make_cpc(prompt_draw="confounded", environments=[5])
    with pytest.raises(ValueError, match="prompt_draw"):
        make_cpc(prompt_draw="careless")


def test_task_module_sees_the_features_under_the_box():
    from samkit.methods.finetune import pooled_under_boxes

    method = make_cpc("task", box_context=True)
    sample = batch_of(method, 1)[0]
    embedding = method.embed([sample["image"]])
    whole = np.array([[0, 0, 63, 63], [0, 0, 20, 20]], dtype=np.float32)
    pooled = pooled_under_boxes(embedding, [whole])
    torch.testing.assert_close(pooled[0], embedding.image_embed[0].mean(dim=(1, 2)))
    assert not torch.allclose(pooled[0], pooled[1])
    torch.nn.init.normal_(method.task_module.mlp[-1].weight)
    tokens = torch.randn(2, 2, 256)
    first = method.task_module(tokens, pooled)
    assert not torch.allclose(first, method.task_module(tokens, pooled.flip(0)))  # the context matters
    assert method.movement([sample["image"]], [whole])["w_rms_from_1"] > 0


def test_capl_movement_starts_at_zero():
    method = make_cpc(box_context=True)
    sample = batch_of(method, 1)[0]
    assert method.movement([sample["image"]], [sample["boxes"][0]]) == {"w_rms_from_1": 0.0, "xi_abs_mean": 0.0}


def test_erm_adapter_is_the_task_modules_size_and_trains_on_confounded_boxes():
    from samkit.methods.finetune import Finetune

    torch.manual_seed(0)
    erm = Finetune(train={**SCENES, "split": "train", "classes": "base", "n": 4},
                   eval_base={**SCENES, "split": "val", "classes": "base", "n": 2}, trainable="prompt_adapter",
                   prompt_draw="confounded", environments=[0, 1], box_context=True, instances_per_image=2)
    capl = make_cpc("task", box_context=True)
    count = lambda module: sum(p.numel() for p in module.parameters())
    assert count(erm.prompt_adapter) == count(capl.task_module)  # a control of the same size
    loss, _ = erm([erm.train_sample(i, np.random.default_rng(i)) for i in range(2)])
    loss.backward()
    assert {n for n, p in erm.named_parameters() if p.grad is not None} == \
        {n for n, p in erm.named_parameters() if n.startswith("prompt_adapter.")}  # SAM frozen


def test_instance_dice_takes_any_boxes_and_evaluate_splits_by_class():
    from samkit.analysis.prompt_bias import expert_boxes, instance_classes
    from samkit.methods.finetune import Finetune

    torch.manual_seed(0)
    method = Finetune(train={**SCENES, "split": "train", "classes": "base", "n": 4},
                      eval_base={**SCENES, "split": "val", "classes": "base", "n": 3}, trainable="prompt_adapter",
                      per_class=True, eval_batch=2)
    data = method.eval_data["base"]
    scenes = [data[i] for i in range(len(data))]
    tight, classes = method.instance_dice(data)
    assert np.array_equal(classes, instance_classes(scenes)) and len(tight) == len(classes)
    same, _ = method.instance_dice(data, expert_boxes(scenes))  # expert boxes are the tight boxes
    assert np.allclose(same, tight)
    # a box far from every object: Dice falls for every instance whose tight box did any good
    away = [np.tile(np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32), (len(b), 1)) for b in expert_boxes(scenes)]
    assert method.instance_dice(data, away)[0].mean() < tight.mean()
    metrics = method.evaluate()
    per_class = {k: v for k, v in metrics.items() if k.startswith("dice_base_")}
    assert set(per_class) == {f"dice_base_{c}" for c in set(classes)}
    assert np.isclose(metrics["dice_base"], tight.mean())
    with pytest.raises(ValueError, match="boxes"):
        method.instance_dice(data, away[:1])


def test_box_ious_compare_each_box_with_its_reference():
    from samkit.analysis.prompt_bias import box_ious

    reference = [np.array([[0, 0, 9, 9], [10, 10, 19, 19]], dtype=np.float32)]
    halved = [np.array([[0, 0, 4, 9], [10, 10, 19, 19]], dtype=np.float32)]
    assert np.allclose(box_ious(halved, reference, (32, 32)), [0.5, 1.0])
