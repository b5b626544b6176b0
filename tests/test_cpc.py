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
