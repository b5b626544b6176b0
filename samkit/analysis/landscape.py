"""The loss landscape of prompt embeddings (ProSAM's Fig. 4 and Proposition 1).

Two parts. Prompts learned for ONE object, as free parameters (`fit_prompts`): by plain gradient
descent (the principle of a non-variational encoder such as VRP-SAM), or as prompt distributions
through reparameterised samples (ProSAM's principle, Eq. 10), many starts in one batch. Then the landscape around any prompt: slices, Laplacians (Hessian traces)
and the noise expectation of Proposition 1.

Everything here takes a *batched* loss `loss_fn(z) -> (B,)`: z is a (B, *shape) stack of
points (prompt embeddings) and row b of the result depends on z[b] only. One call of
`loss_fn` on many points is one batched decoder call, so a 15 x 15 slice, 64 Hutchinson
probes or 256 noisy copies of a prompt cost one (chunked) pass each, never a Python loop
over points.

Second derivatives come from `torch.func`: a Hessian-vector product is the vector-Jacobian
product of the gradient (reverse over reverse), and because rows are independent the HVPs
of B probes at one point are one call on B copies of it:
    d/dZ sum_b L(Z_b) = (grad L(Z_1), ..., grad L(Z_B)),  so  HVP(Z, V)_b = H(Z_b) V_b.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, vjp

from samkit.errors import bad_argument
from samkit.losses import bce_dice_loss
from samkit.methods.prosam import NU, sample_prompts
from samkit.models.base import ImageEmbedding, SamAdapter

BatchedLoss = Callable[[torch.Tensor], torch.Tensor]  # (B, *shape) -> (B,)


# ---- prompts learned for one object ----------------------------------------------------
def _object_target(model: SamAdapter, embedding: ImageEmbedding, target_mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    if len(embedding) != 1:
        raise bad_argument("embedding", "the embedding of one image", f"{len(embedding)} images")
    target = torch.as_tensor(np.asarray(target_mask) if not torch.is_tensor(target_mask) else target_mask)
    if tuple(target.shape) != tuple(embedding.original_sizes[0]) or not target.bool().any():
        raise bad_argument("target_mask", f"a non-empty mask of the image's size {embedding.original_sizes[0]}",
                           target_mask)
    return target.float().to(model.device)


def _object_logits(model: SamAdapter, embedding: ImageEmbedding, prompts: torch.Tensor) -> torch.Tensor:
    """(B, m, 256) prompt tokens -> (B, H, W) logits of SAM's single mask at the image's own size."""
    low_res, _ = model.decode(embedding, prompts, multimask=False)
    return model.postprocess_masks(low_res, embedding.input_sizes[0], embedding.original_sizes[0])[:, 0]


def object_prompt_loss(model: SamAdapter, embedding: ImageEmbedding, target_mask: np.ndarray | torch.Tensor,
                       chunk: int = 256) -> BatchedLoss:
    """The loss of prompt tokens on one object: z (B, m, 256) -> (B,) BCE + Dice (Eq. 4).

    Masks are SAM's single-mask output, compared at the image's own size. Each call is one
    batched decoder call per `chunk` prompt sets; autograd (and torch.func) flow to z.
    """
    target = _object_target(model, embedding, target_mask)

    def loss(prompts: torch.Tensor) -> torch.Tensor:
        return torch.cat([bce_dice_loss(_object_logits(model, embedding, prompts[start:start + chunk]), target)
                          for start in range(0, prompts.shape[0], chunk)])
    return loss


def object_prompt_iou(model: SamAdapter, embedding: ImageEmbedding, target_mask: np.ndarray | torch.Tensor,
                      chunk: int = 256) -> BatchedLoss:
    """The IoU of prompt tokens' masks with one object: z (B, m, 256) -> (B,), without autograd."""
    target = _object_target(model, embedding, target_mask).bool()

    def score(prompts: torch.Tensor) -> torch.Tensor:
        values = []
        with torch.no_grad():
            for start in range(0, prompts.shape[0], chunk):
                masks = _object_logits(model, embedding, prompts[start:start + chunk]) > model.mask_threshold
                inter, union = (masks & target).sum((1, 2)), (masks | target).sum((1, 2))
                values.append(inter.float() / union.clamp_min(1).float())
        return torch.cat(values)
    return score


@dataclass
class FitResult:
    """P prompts learned by `fit_prompts`, one row per start."""

    prompts: torch.Tensor  # (P, m, 256): the points (gradient descent) or the means mu (distributions)
    sigma: torch.Tensor | None  # (P, m, 256) scales, None for gradient descent
    family: str | None  # None (gradient descent), "student_t" or "gaussian"
    losses: torch.Tensor  # (P,) the smoothed training loss at the step each row stopped
    steps: torch.Tensor  # (P,) steps each row ran
    plateaued: torch.Tensor  # (P,) bool: stopped by the plateau rule (else by max_steps)
    history: np.ndarray  # (steps, P) training loss per step, NaN once a row stopped


class _Plateau:
    """Per-row early stopping: stop a row once its loss has not improved by more than `tolerance`
    for `patience` consecutive steps (the paper: 3e-4 over 100 steps).

    The reference is the loss at the last improvement larger than `tolerance`, so a slow but steady
    decline still counts once it adds up to more than `tolerance` (Keras' `min_delta` rule). With
    `smoothing` > 0 the rule reads an exponential moving average of each row's loss,
    ema <- smoothing * ema + (1 - smoothing) * loss, so that one lucky Monte Carlo draw of Eq. 10
    does not set a reference the next steps cannot beat; gradient descent gets the same rule."""

    def __init__(self, rows: int, tolerance: float, patience: int, smoothing: float = 0.0):
        self.reference = torch.full((rows,), math.inf, dtype=torch.float64)
        self.average = torch.full((rows,), math.nan, dtype=torch.float64)
        self.waited = torch.zeros(rows, dtype=torch.long)
        self.tolerance, self.patience, self.smoothing = tolerance, patience, smoothing

    def update(self, rows: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Record `losses` of `rows`; return which of them have plateaued."""
        previous = self.average[rows]
        smoothed = torch.where(previous.isnan(), losses, self.smoothing * previous + (1 - self.smoothing) * losses)
        self.average[rows] = smoothed
        improved = smoothed < self.reference[rows] - self.tolerance
        self.reference[rows] = torch.where(improved, smoothed, self.reference[rows])
        self.waited[rows] = torch.where(improved, 0, self.waited[rows] + 1)
        return self.waited[rows] >= self.patience


def _check_schedule(lr: float, tolerance: float, patience: int, max_steps: int, smoothing: float) -> None:
    for name, value, ok, expected in (
            ("lr", lr, lr > 0, "a positive number"), ("tolerance", tolerance, tolerance >= 0, "a number >= 0"),
            ("patience", patience, isinstance(patience, int) and patience >= 1, "an int >= 1"),
            ("max_steps", max_steps, isinstance(max_steps, int) and max_steps >= 1, "an int >= 1"),
            ("smoothing", smoothing, 0 <= smoothing < 1, "a number in [0, 1)")):
        if not ok:
            raise bad_argument(name, expected, value)


def fit_prompts(loss_fn: BatchedLoss, init: torch.Tensor, family: str | None = None, sigma_init: float = 1.0,
                learn_sigma: bool = True, samples: int = 10, nu: float = NU, lr: float = 2.0,
                sigma_lr: float = 0.05, tolerance: float = 3e-4, patience: int = 100, max_steps: int = 2000,
                smoothing: float = 0.0) -> FitResult:
    """Learn P prompts from `init` (P, m, 256) with Adam, all rows in one batched call per step.

    family None is gradient descent, the non-variational principle of Fig. 4: z is a free
    parameter moved by dL/dz only. family "student_t" (ProSAM) or "gaussian" learns one
    distribution per row, mu started at the row's start and sigma at `sigma_init` (kept there
    unless `learn_sigma`): the loss is Eq. 10, the mean loss of K = `samples` reparameterised
    draws, and dL/dmu, dL/dlog sigma flow through the draws. Every row stops on its own plateau
    (`_Plateau`, the same rule for both principles) and keeps the values it had then.
    """
    _check_schedule(lr, tolerance, patience, max_steps, smoothing)
    if family is not None and family not in ("student_t", "gaussian"):
        raise bad_argument("family", "None (gradient descent), student_t or gaussian", family)
    if family is not None and not sigma_init > 0:
        raise bad_argument("sigma_init", "a positive number", sigma_init)
    if init.ndim != 3:
        raise bad_argument("init", "a (P, m, 256) stack of starting prompts", init)
    mu = init.detach().clone().requires_grad_(True)
    groups = [{"params": [mu], "lr": lr}]
    log_sigma = None
    if family is not None:
        log_sigma = torch.full_like(mu, math.log(sigma_init)).requires_grad_(learn_sigma)
        if learn_sigma:
            groups.append({"params": [log_sigma], "lr": sigma_lr})
    optimizer = torch.optim.Adam(groups)
    rows = init.shape[0]
    final_mu, final_log_sigma = mu.detach().clone(), None if log_sigma is None else log_sigma.detach().clone()
    final_loss, steps = torch.full((rows,), math.nan, dtype=torch.float64), torch.zeros(rows, dtype=torch.long)
    plateau, running = _Plateau(rows, tolerance, patience, smoothing), torch.arange(rows)
    plateaued, history = torch.zeros(rows, dtype=torch.bool), []
    for step in range(max_steps):
        if log_sigma is None:
            losses = loss_fn(mu[running])
        else:  # (K, P', m, 256) draws -> one decoder call on K * P' rows -> Eq. 10 per row
            draws = sample_prompts(family, mu[running], log_sigma[running].exp(), samples, nu, event_dims=2)
            losses = loss_fn(draws.flatten(0, 1)).view(samples, len(running)).mean(0)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # rows are independent: each gets its own gradient
        values = losses.detach().double().cpu()
        row_history = torch.full((rows,), math.nan, dtype=torch.float64)
        row_history[running] = values
        history.append(row_history.numpy())
        done = plateau.update(running, values)
        final_loss[running], steps[running] = plateau.average[running], step + 1
        final_mu[running] = mu.detach()[running]  # the values these losses belong to
        if final_log_sigma is not None:
            final_log_sigma[running] = log_sigma.detach()[running]
        plateaued[running[done]] = True
        running = running[~done]
        if not len(running):
            break
        optimizer.step()  # rows that stopped are no longer read: their values were kept
    sigma = None if final_log_sigma is None else final_log_sigma.exp()
    return FitResult(final_mu, sigma, family, final_loss, steps, plateaued, np.stack(history))


# ---- the landscape around a prompt -----------------------------------------------------


def _check_point(point: torch.Tensor, name: str = "center") -> torch.Tensor:
    if not torch.is_tensor(point) or not torch.is_floating_point(point) or point.ndim < 1:
        raise bad_argument(name, "a floating-point tensor (one point, no batch dimension)", point)
    return point.detach()


def chunked_values(loss_fn: BatchedLoss, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """`loss_fn` (or any batched score) over many points, `chunk` rows per call (memory), without autograd."""
    with torch.no_grad():
        return torch.cat([loss_fn(points[start:start + chunk]) for start in range(0, len(points), chunk)])


def random_directions(count: int, shape: Sequence[int], generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`count` random directions of unit Euclidean norm over the whole point (all tokens together)."""
    if not isinstance(count, int) or count < 1:
        raise bad_argument("count", "an int >= 1", count)
    directions = torch.randn((count, *shape), generator=generator, dtype=dtype)
    return directions / directions.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))


def perturbation_iou(score_fn: BatchedLoss, points: torch.Tensor, radii: Sequence[float], draws: int = 16,
                     generator: torch.Generator | None = None, chunk: int = 512) -> np.ndarray:
    """Mean score (e.g. IoU, `object_prompt_iou`) of each point moved by `draws` random steps of each
    Euclidean length in `radii`: a (P, R) array. Every point gets the same directions, so two points'
    rows are paired; radius 0 is the point itself."""
    if not isinstance(draws, int) or draws < 1:
        raise bad_argument("draws", "an int >= 1", draws)
    points = points.detach()
    directions = random_directions(draws, points.shape[1:], generator, points.dtype).to(points)
    lengths = torch.as_tensor(list(radii), dtype=points.dtype, device=points.device)
    moved = points[:, None, None] + lengths.view(1, -1, 1, *([1] * (points.ndim - 1))) * directions[None, None]
    scores = chunked_values(score_fn, moved.flatten(0, 2), chunk).view(len(points), len(lengths), draws)
    return scores.mean(-1).double().cpu().numpy()


def margin(radii: Sequence[float], scores: np.ndarray, level: float = 0.8) -> np.ndarray:
    """The radius at which each row of `scores` (P, R) (see `perturbation_iou`) first falls below
    `level`, linearly interpolated between radii: 0 where the point itself (radius 0, the first) is
    below, inf where no radius is."""
    radii, scores = np.asarray(radii, dtype=np.float64), np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != len(radii) or radii[0] != 0 or np.any(np.diff(radii) <= 0):
        raise bad_argument("radii", f"{scores.shape[1]} increasing radii from 0, one per column of scores", radii)
    out = np.full(len(scores), np.inf)
    for row, values in enumerate(scores):
        below = np.flatnonzero(values < level)
        if not len(below):
            continue
        k = below[0]
        if k == 0:
            out[row] = 0.0
            continue
        hi, lo = values[k - 1], values[k]  # hi >= level > lo
        out[row] = radii[k - 1] + (hi - level) / (hi - lo) * (radii[k] - radii[k - 1])
    return out


def slice_1d(loss_fn: BatchedLoss, center: torch.Tensor, direction: torch.Tensor,
             offsets: Sequence[float] | torch.Tensor, chunk: int = 256) -> np.ndarray:
    """L(center + t * direction) for every t in `offsets` (one batched evaluation)."""
    center = _check_point(center)
    if direction.shape != center.shape:
        raise bad_argument("direction", f"a tensor of the center's shape {tuple(center.shape)}", direction)
    t = torch.as_tensor(offsets, dtype=center.dtype).view(-1, *([1] * center.ndim))
    return chunked_values(loss_fn, center + t * direction.to(center), chunk).cpu().numpy()


def slice_2d(loss_fn: BatchedLoss, center: torch.Tensor, directions: tuple[torch.Tensor, torch.Tensor],
             offsets: Sequence[float] | torch.Tensor, chunk: int = 256) -> np.ndarray:
    """L(center + a * d1 + b * d2) on the grid offsets x offsets: an (R, R) array, rows = a."""
    center = _check_point(center)
    first, second = (d.to(center) for d in directions)
    t = torch.as_tensor(offsets, dtype=center.dtype)
    a, b = torch.meshgrid(t, t, indexing="ij")
    expand = (-1, *([1] * center.ndim))
    points = center + a.reshape(expand) * first + b.reshape(expand) * second
    return chunked_values(loss_fn, points, chunk).view(len(t), len(t)).cpu().numpy()


def hessian_vector_products(loss_fn: BatchedLoss, points: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """H(points[b]) @ vectors[b] for every row b, in one reverse-over-reverse `torch.func` call."""
    if points.shape != vectors.shape:
        raise bad_argument("vectors", f"one vector per point, shape {tuple(points.shape)}", vectors)
    gradient_of_total = grad(lambda z: loss_fn(z).sum())
    _, pullback = vjp(gradient_of_total, points.detach())
    return pullback(vectors.to(points))[0]


def hutchinson_laplacian(loss_fn: BatchedLoss, center: torch.Tensor, probes: int = 64, chunk: int = 32,
                         generator: torch.Generator | None = None) -> tuple[float, float]:
    """Laplacian (trace of the Hessian) at `center` by Hutchinson's estimator, and its standard error.

    tr(H) = E[v^T H v] for Rademacher v (entries +-1), whose variance is the smallest among
    probe distributions: 2 * sum_{i != j} H_ij^2.
    """
    center = _check_point(center)
    if not isinstance(probes, int) or probes < 2:
        raise bad_argument("probes", "an int >= 2 (the standard error needs two)", probes)
    values = []
    for start in range(0, probes, chunk):
        count = min(chunk, probes - start)
        signs = torch.randint(0, 2, (count, *center.shape), generator=generator).to(center) * 2 - 1
        hvp = hessian_vector_products(loss_fn, center.expand(count, *center.shape).clone(), signs)
        values.append((signs * hvp).flatten(1).sum(1))
    samples = torch.cat(values).double()
    return float(samples.mean()), float(samples.std() / math.sqrt(probes))


def exact_laplacian(loss_fn: BatchedLoss, center: torch.Tensor, chunk: int = 64) -> float:
    """The exact Hessian trace: sum_i e_i^T H e_i over every coordinate (n HVPs: small n only)."""
    center = _check_point(center)
    size = center.numel()
    total = 0.0
    for start in range(0, size, chunk):
        rows = torch.arange(start, min(size, start + chunk))
        basis = torch.zeros(len(rows), size, dtype=center.dtype, device=center.device)
        basis[torch.arange(len(rows)), rows] = 1.0
        basis = basis.view(len(rows), *center.shape)
        hvp = hessian_vector_products(loss_fn, center.expand_as(basis).clone(), basis)
        total += float((basis * hvp).flatten(1).sum().double())
    return total


def noise_expectation(loss_fn: BatchedLoss, center: torch.Tensor, sigmas: Sequence[float], samples: int = 128,
                      chunk: int = 256, generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """E[L(z + e)] - L(z) for e ~ N(0, sigma^2 I), each sigma: the left side of Proposition 1.

    Returns (estimates, standard errors), one per sigma. The same `samples` Gaussian
    directions g serve every sigma (e = sigma * g), in antithetic pairs +-e: the odd terms of
    the Taylor series cancel exactly, so what is left is sigma^2/2 g^T H g + O(sigma^4).
    """
    center = _check_point(center)
    if not isinstance(samples, int) or samples < 2 or samples % 2:
        raise bad_argument("samples", "an even int >= 2 (antithetic pairs)", samples)
    directions = torch.randn((samples // 2, *center.shape), generator=generator).to(center)
    base = float(chunked_values(loss_fn, center[None], 1)[0].double())
    estimates, errors = [], []
    for sigma in sigmas:
        noise = float(sigma) * directions
        points = torch.cat([center + noise, center - noise])
        losses = chunked_values(loss_fn, points, chunk).double()
        pair_means = (losses[: samples // 2] + losses[samples // 2:]) / 2 - base
        estimates.append(float(pair_means.mean()))
        errors.append(float(pair_means.std() / math.sqrt(samples // 2)))
    return np.array(estimates), np.array(errors)


__all__ = ["BatchedLoss", "FitResult", "chunked_values", "exact_laplacian", "fit_prompts", "hessian_vector_products",
           "hutchinson_laplacian", "margin", "noise_expectation", "object_prompt_iou", "object_prompt_loss",
           "perturbation_iou", "random_directions", "slice_1d", "slice_2d"]
