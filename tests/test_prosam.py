"""ProSAM: Student-t reparameterisation, gradients, the landscape tools, the encoder and the method's shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samkit.analysis import fewshot_dose, landscape
from samkit.datasets import ShapeScenes
from samkit.methods.prosam import (
    ProSAM,
    VisualReferencePromptEncoder,
    bce_dice_loss,
    gaussian_prompts,
    mask_on_grid,
    merge_samples,
    noisy_tokens,
    student_t_prompts,
    student_t_variance,
)


# ---- Eq. 5-7 -----------------------------------------------------------------------------
def test_student_t_samples_have_the_distributions_mean_variance_and_tails():
    torch.manual_seed(0)
    mu = torch.linspace(-2.0, 3.0, 12).view(3, 4)
    sigma = torch.linspace(0.5, 2.0, 12).view(3, 4)
    draws = student_t_prompts(mu, sigma, samples=200_000, nu=5.0, event_dims=2)  # n = 12, nu + n = 17
    assert draws.shape == (200_000, 3, 4)
    variance = student_t_variance(sigma, n=12, nu=5.0)
    standard_error = torch.sqrt(variance / len(draws))
    assert torch.all((draws.mean(0) - mu).abs() < 5 * standard_error)
    assert torch.allclose(draws.var(0), variance, rtol=0.03)
    # Heavier tails than a Gaussian: the t's excess kurtosis is 6 / (dof - 4).
    standardised = (draws - mu) / variance.sqrt()
    kurtosis = (standardised ** 4).mean(0) - 3
    assert torch.allclose(kurtosis.mean(), torch.tensor(6 / 13), atol=0.1)


def test_gaussian_samples_have_variance_sigma_squared():
    torch.manual_seed(1)
    mu, sigma = torch.zeros(2, 5), torch.full((2, 5), 3.0)
    draws = gaussian_prompts(mu, sigma, samples=100_000)
    assert torch.allclose(draws.var(0), sigma ** 2, rtol=0.03)


def test_each_prompt_set_gets_its_own_chi_square_draw():
    torch.manual_seed(2)
    mu, sigma = torch.zeros(4, 2, 3), torch.ones(4, 2, 3)  # 4 prompt sets of 2 tokens x 3 channels
    draws = student_t_prompts(mu, sigma, samples=5, nu=5.0, event_dims=2)
    assert draws.shape == (5, 4, 2, 3)


def test_gradients_reach_mu_and_sigma():
    torch.manual_seed(3)
    mu = torch.randn(2, 8, requires_grad=True)
    log_sigma = torch.zeros(2, 8, requires_grad=True)
    draws = student_t_prompts(mu, log_sigma.exp(), samples=10, event_dims=2)
    ((draws - 1.0) ** 2).mean().backward()  # Eq. 10 with a toy loss
    for parameter in (mu, log_sigma):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0


def test_bad_sampling_arguments_name_the_argument():
    with pytest.raises(ValueError, match="sigma"):
        student_t_prompts(torch.zeros(2, 3), torch.ones(3, 2), samples=4)
    with pytest.raises(ValueError, match="samples"):
        student_t_prompts(torch.zeros(2, 3), torch.ones(2, 3), samples=0)
    with pytest.raises(ValueError, match="event_dims"):
        student_t_prompts(torch.zeros(2, 3), torch.ones(2, 3), samples=2, event_dims=3)


# ---- the landscape tools on a quadratic ----------------------------------------------------
def _quadratic(size: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    root = torch.randn(size, size, generator=generator, dtype=torch.float64)
    hessian = (root + root.T) / 2 + torch.eye(size, dtype=torch.float64)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:  # (B, 3, 4) -> (B,): 1/2 z^T A z per row
        flat = z.flatten(1)
        return 0.5 * torch.einsum("bi,ij,bj->b", flat, hessian, flat)
    return loss_fn, hessian


def test_hessian_vector_products_are_batched_and_exact():
    loss_fn, hessian = _quadratic()
    points = torch.randn(5, 3, 4, dtype=torch.float64)
    vectors = torch.randn(5, 3, 4, dtype=torch.float64)
    products = landscape.hessian_vector_products(loss_fn, points, vectors)
    assert torch.allclose(products.flatten(1), vectors.flatten(1) @ hessian.T)


def test_hutchinson_matches_the_exact_trace_on_a_quadratic():
    loss_fn, hessian = _quadratic()
    center = torch.randn(3, 4, dtype=torch.float64)
    trace = float(torch.trace(hessian))
    assert landscape.exact_laplacian(loss_fn, center) == pytest.approx(trace, rel=1e-9)
    estimate, standard_error = landscape.hutchinson_laplacian(
        loss_fn, center, probes=4000, chunk=1000, generator=torch.Generator().manual_seed(0))
    assert abs(estimate - trace) < 4 * standard_error
    assert estimate == pytest.approx(trace, rel=0.1, abs=0.5)


def test_noise_expectation_is_sigma_squared_over_two_times_the_trace_for_a_quadratic():
    loss_fn, hessian = _quadratic()
    center = torch.randn(3, 4, dtype=torch.float64)
    sigmas = [0.1, 1.0]
    lhs, stderr = landscape.noise_expectation(loss_fn, center, sigmas, samples=20_000,
                                              generator=torch.Generator().manual_seed(0))
    rhs = np.array(sigmas) ** 2 / 2 * float(torch.trace(hessian))
    assert np.all(np.abs(lhs - rhs) < 5 * stderr + 1e-12)


def test_slices_have_the_grid_shape_and_pass_through_the_center():
    loss_fn, _ = _quadratic()
    center = torch.zeros(3, 4, dtype=torch.float64)
    first, second = landscape.random_directions(2, (3, 4), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(first.norm()) == pytest.approx(1.0)
    line = landscape.slice_1d(loss_fn, center, first, torch.linspace(-1, 1, 5))
    grid = landscape.slice_2d(loss_fn, center, (first, second), torch.linspace(-1, 1, 5))
    assert line.shape == (5,) and grid.shape == (5, 5)
    assert line[2] == 0.0 and grid[2, 2] == 0.0


def test_descent_stops_each_prompt_on_its_own_plateau():
    starts = torch.tensor([0.0, 1.0, 5.0]).view(3, 1, 1).expand(3, 1, 2)  # the loss's minimum is at 0
    result = landscape.fit_prompts(lambda z: (z ** 2).mean((1, 2)), starts, lr=0.05, tolerance=1e-4,
                                   patience=10, max_steps=1000)
    assert result.prompts.shape == (3, 1, 2) and result.sigma is None
    assert result.plateaued.all()
    assert result.steps[0] < result.steps[2]  # the prompt that started at the minimum stops first
    assert torch.all(result.losses[1:] < 0.1 * torch.tensor([1.0, 25.0]))  # from losses 1 and 25
    assert result.history.shape == (int(result.steps.max()), 3) and np.isnan(result.history[-1, 0])


def test_fitting_distributions_lowers_the_expected_loss_and_sigma_row_by_row():
    torch.manual_seed(4)
    starts = torch.stack([torch.zeros(1, 4), torch.full((1, 4), 4.0)])
    result = landscape.fit_prompts(lambda z: ((z - 2.0) ** 2).mean((1, 2)), starts, family="student_t",
                                   sigma_init=1.0, samples=10, lr=0.1, sigma_lr=0.1, patience=50, max_steps=300,
                                   smoothing=0.5)
    assert result.history[-1][0] < result.history[0][0] or np.isnan(result.history[-1][0])
    assert torch.allclose(result.prompts, torch.full((2, 1, 4), 2.0), atol=0.3)
    assert result.sigma.shape == (2, 1, 4) and float(result.sigma.mean()) < 1.0  # noise only costs


def test_a_distribution_with_vanishing_fixed_sigma_follows_gradient_descent():
    loss_fn, _ = _quadratic()
    starts = torch.randn(3, 3, 4, dtype=torch.float64)
    schedule = dict(lr=0.05, tolerance=1e-6, patience=5, max_steps=40)
    descent = landscape.fit_prompts(loss_fn, starts, **schedule)
    vanishing = landscape.fit_prompts(loss_fn, starts, family="gaussian", sigma_init=1e-12, learn_sigma=False,
                                      samples=3, **schedule)
    assert torch.allclose(vanishing.prompts, descent.prompts, atol=1e-8)
    assert torch.equal(vanishing.steps, descent.steps)
    assert torch.allclose(vanishing.sigma, torch.full_like(vanishing.sigma, 1e-12), rtol=1e-9, atol=0)  # kept


def test_plateau_smoothing_ignores_one_lucky_draw():
    plateau = landscape._Plateau(1, tolerance=0.01, patience=3, smoothing=0.9)
    row = torch.tensor([0])
    flags = [bool(plateau.update(row, torch.tensor([value]))[0]) for value in (1.0, 0.2, 1.0, 1.0, 1.0)]
    # raw, the 0.2 would set a reference the next steps never beat; smoothed, it barely moves the average
    assert plateau.reference[0] > 0.9 and flags[-1]


def test_perturbation_iou_is_paired_and_margin_interpolates():
    score = lambda z: (z.flatten(1).norm(dim=1) < 1.0).double()  # 1 inside the unit ball, 0 outside
    points = torch.zeros(2, 2, 3, dtype=torch.float64)
    points[1, 0, 0] = 0.5
    scores = landscape.perturbation_iou(score, points, [0.0, 0.4, 2.0], draws=64,
                                        generator=torch.Generator().manual_seed(0))
    assert scores.shape == (2, 3)
    assert scores[0].tolist() == [1.0, 1.0, 0.0] and scores[1, 0] == 1.0 and 0 < scores[1, 1] <= 1
    margins = landscape.margin([0.0, 1.0, 2.0], np.array([[1.0, 1.0, 0.0], [1.0, 0.6, 0.0], [0.5, 0.9, 1.0],
                                                          [0.9, 0.9, 0.9]]))
    assert margins.tolist() == pytest.approx([1.2, 0.5, 0.0, np.inf])
    with pytest.raises(ValueError, match="radii"):
        landscape.margin([0.5, 1.0], np.ones((1, 2)))


# ---- the encoder and the method --------------------------------------------------------
def test_encoder_shapes_and_gradients_reach_both_heads():
    torch.manual_seed(5)
    encoder = VisualReferencePromptEncoder(in_dim=32, dim=64, tokens=6, heads=4, token_dim=256, variational=True)
    reference, target = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1.0
    mu, log_sigma, pseudo = encoder(reference, mask, target)
    assert mu.shape == log_sigma.shape == (2, 6, 256)
    assert pseudo.shape == (2, 1, 8, 8) and pseudo.min() >= 0 and pseudo.max() <= 1
    draws = student_t_prompts(mu, log_sigma.exp(), samples=10)
    assert draws.shape == (10, 2, 6, 256)
    draws.square().mean().backward()
    assert encoder.mean_head.weight.grad.abs().sum() > 0
    assert encoder.log_sigma_head.weight.grad.abs().sum() > 0
    vrp = VisualReferencePromptEncoder(in_dim=32, dim=64, tokens=6, heads=4)
    tokens, none, _ = vrp(reference, mask, target)
    assert tokens.shape == (2, 6, 256) and none is None and vrp.log_sigma_head is None


def test_mask_on_grid_follows_sams_resize_and_padding():
    mask = np.zeros((100, 200), dtype=bool)
    mask[:, :100] = True  # the left half
    grid = mask_on_grid(mask, input_size=(128, 256), image_size=256, grid=(16, 16))
    assert grid.shape == (1, 16, 16)
    assert float(grid[0, :8, :8].mean()) == pytest.approx(1.0, abs=0.02)  # top-left: the mask
    assert float(grid[0, 8:].max()) == 0.0  # the padding below the image


def test_merge_samples_strategies():
    logits = torch.tensor([[[1.0, -1.0]], [[-1.0, -1.0]], [[2.0, -3.0]], [[-2.0, 4.0]]])  # K = 4, 1 x 2 masks
    merged = merge_samples(logits)
    assert merged["max_binary"].tolist() == [[True, True]]
    assert merged["mean_binary"].tolist() == [[True, False]]  # 2 of 4 votes: a tie is kept
    assert merged["majority"].tolist() == [[False, False]]  # a majority needs 3 of 4
    assert merged["mean_logits"].tolist() == [[False, False]]


def test_bce_dice_loss_is_per_mask():
    target = torch.zeros(8, 8)
    target[2:6, 2:6] = 1
    good, bad = target * 20 - 10, -target * 20 + 10
    losses = bce_dice_loss(torch.stack([good, bad]), target)
    assert losses.shape == (2,) and losses[0] < 0.01 < losses[1]


@pytest.fixture(scope="module")
def tiny_vrp():
    scenes = {"kind": "shapescenes", "size": 64, "seed": 3}
    return ProSAM(train={**scenes, "split": "train", "classes": "base", "n": 24},
                  test={**scenes, "split": "val", "classes": "novel", "n": 16}, variant="vrp", tokens=3,
                  samples=3, dim=64, heads=4, train_episodes=4, test_episodes=3, eval_batch=2)


@pytest.fixture(scope="module")
def tiny_prosam():
    scenes = {"kind": "shapescenes", "size": 64, "seed": 3}
    torch.manual_seed(0)
    return ProSAM(train={**scenes, "split": "train", "classes": "base", "n": 24},
                  test={**scenes, "split": "val", "classes": "novel", "n": 16}, variant="student_t", tokens=3,
                  samples=4, dim=64, heads=4, train_episodes=4, test_episodes=3, eval_batch=2)


def test_method_forward_and_evaluate(tiny_prosam):
    method = tiny_prosam
    batch = [method.train_sample(i, np.random.default_rng(i)) for i in range(2)]
    loss, logs = method(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and logs["noise_std"] > 0
    loss.backward()
    assert method.prompt_encoder.log_sigma_head.weight.grad is not None
    out = method.predict(batch, samples=4)
    assert out["mean"][0].shape == batch[0]["target_mask"].shape
    assert out["samples"][0].shape == (4, *batch[0]["target_mask"].shape)
    metrics = method.evaluate()
    for key in ("miou", "TPR", "TNR", "FPR", "FNR", "miou_majority", "miou_max_logits"):
        assert 0.0 <= metrics[key] <= 1.0
    assert math.isclose(metrics["TPR"] + metrics["FNR"], 1.0, abs_tol=1e-9)
    # the frozen SAM is not part of the trained (and checkpointed) weights
    assert all(name.startswith("prompt_encoder.") for name, p in method.named_parameters() if p.requires_grad)


def test_method_rejects_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        ProSAM(train={"kind": "shapescenes", "n": 2}, test={"kind": "shapescenes", "n": 2}, variant="laplace")
    with pytest.raises(ValueError, match="backbone"):
        ProSAM(train={"kind": "shapescenes", "n": 2}, test={"kind": "shapescenes", "n": 2}, backbone="vgg")


def test_resnet_backbone_without_weights_falls_back_to_sams_features(tmp_path):
    with pytest.warns(UserWarning, match="ResNet-50"):
        method = ProSAM(train={"kind": "shapescenes", "size": 64, "n": 24, "seed": 3},
                        test={"kind": "shapescenes", "size": 64, "classes": "novel", "n": 16, "seed": 3},
                        tokens=2, dim=64, heads=4, backbone="resnet50",
                        backbone_weights=str(tmp_path / "missing.pth"))
    assert method.backbone is None and method.prompt_encoder.augment.project.in_channels == 256


def test_noisy_tokens_scale_with_the_token_rms_and_vanish_at_zero():
    torch.manual_seed(6)
    tokens = torch.randn(3, 4, 256) * torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1)
    assert noisy_tokens(tokens, 0.0, samples=10).shape == (1, 3, 4, 256)  # equal copies: one is enough
    assert torch.equal(noisy_tokens(tokens, 0.0, samples=10)[0], tokens)
    draws = noisy_tokens(tokens, 0.3, samples=200)
    spread = (draws - tokens).std(dim=(0, 2, 3)) / tokens.square().mean(dim=(1, 2)).sqrt()
    assert torch.allclose(spread, torch.full((3,), 0.3), rtol=0.05)
    with pytest.raises(ValueError, match="noise"):
        noisy_tokens(tokens, -1.0, samples=2)


def test_dose_zero_is_the_vrp_path_exactly_and_a_dose_changes_it(tiny_vrp):
    method = tiny_vrp
    batch = [method.train_sample(i, np.random.default_rng(i)) for i in range(2)]
    method.reset_encoder(0)
    torch.manual_seed(1)
    plain, _ = method(batch)
    plain.backward()
    plain_grads = [p.grad.clone() for p in method.prompt_encoder.parameters()]
    method.noise = 0.0
    method.reset_encoder(0)
    method.prompt_encoder.zero_grad()
    torch.manual_seed(2)  # a different noise stream changes nothing at dose 0
    dosed, _ = method(batch)
    dosed.backward()
    assert torch.equal(dosed, plain)
    assert all(torch.equal(p.grad, g) for p, g in zip(method.prompt_encoder.parameters(), plain_grads))
    method.noise = 1.0
    torch.manual_seed(2)
    assert not torch.equal(method(batch)[0], plain)
    method.eval()  # testing reads the noise-free tokens whatever the dose
    items = [{**b, "target_index": i} for i, b in enumerate(batch)]
    scored = fewshot_dose.score_episodes(method, items, batch=2)
    method.noise = 0.0
    assert np.array_equal(fewshot_dose.score_episodes(method, items, batch=2)["iou"], scored["iou"])


def test_training_at_two_doses_sees_the_same_batches(tiny_vrp):
    curves = [fewshot_dose.train_encoder(tiny_vrp, seed=3, steps=2, noise=noise, batch=2) for noise in (0.0, 0.0, 1.0)]
    assert np.array_equal(curves[0], curves[1])  # seeded: the same start, batches and noise
    assert curves[2][0] != curves[0][0]  # the first step's loss already sees the noise
    assert not tiny_vrp.training
    with pytest.raises(ValueError, match="noise"):
        ProSAM(train={"kind": "shapescenes", "n": 2}, test={"kind": "shapescenes", "n": 2}, variant="student_t",
               noise=0.3)


def test_decoys_share_the_class_texture_and_hide_part_of_the_truth():
    scenes = ShapeScenes("val", "novel", n=4, seed=3, size=64)
    scene = scenes[0]
    name = scene.class_names[0]
    image, decoy = scenes.paint_decoy(scene, name, np.random.default_rng(0))
    again, _ = scenes.paint_decoy(scene, name, np.random.default_rng(0))
    assert np.array_equal(image, again) and decoy.any()
    assert np.array_equal(image[~decoy], scene.image[~decoy]) and not np.array_equal(image[decoy], scene.image[decoy])
    item = {"class_name": name, "target_index": 0, "target_image": scene.image,
            "target_mask": scene.masks_of(name).any(0)}
    ambiguous = fewshot_dose.decoy_episodes([item, dict(item)], scenes, seed=0)
    assert ambiguous[0]["target_image"] is ambiguous[1]["target_image"]  # one decoy per (image, class)
    assert not (ambiguous[0]["target_mask"] & ambiguous[0]["decoy_mask"]).any()
    with pytest.raises(ValueError, match="texture_class"):
        scenes.paint_decoy(scene, "sand", np.random.default_rng(0))
    with pytest.raises(ValueError, match="style"):
        ShapeScenes("val", "novel", n=1, size=64, style="ocean").paint_decoy(scene, name, np.random.default_rng(0))
