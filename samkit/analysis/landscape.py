"""The loss landscape of prompt embeddings (ProSAM's Fig. 4 and Proposition 1).

Two parts. Prompts learned for ONE object, as free parameters: many prompts by plain gradient
descent (`descend_prompts`, the principle of a non-variational encoder such as VRP-SAM), or one
prompt distribution through reparameterised samples (`fit_prompt_distribution`, ProSAM's
principle, Eq. 10). Then the landscape around any prompt: slices, Laplacians (Hessian traces)
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
def object_prompt_loss(model: SamAdapter, embedding: ImageEmbedding, target_mask: np.ndarray | torch.Tensor,
                       chunk: int = 256) -> BatchedLoss:
    """The loss of prompt tokens on one object: z (B, m, 256) -> (B,) BCE + Dice (Eq. 4).

    Masks are SAM's single-mask output, compared at the image's own size. Each call is one
    batched decoder call per `chunk` prompt sets; autograd (and torch.func) flow to z.
    """
    if len(embedding) != 1:
        raise bad_argument("embedding", "the embedding of one image", f"{len(embedding)} images")
    target = torch.as_tensor(np.asarray(target_mask) if not torch.is_tensor(target_mask) else target_mask)
    if tuple(target.shape) != tuple(embedding.original_sizes[0]) or not target.bool().any():
        raise bad_argument("target_mask", f"a non-empty mask of the image's size {embedding.original_sizes[0]}",
                           target_mask)
    target = target.float().to(model.device)

    def loss(prompts: torch.Tensor) -> torch.Tensor:
        values = []
        for start in range(0, prompts.shape[0], chunk):
            low_res, _ = model.decode(embedding, prompts[start:start + chunk], multimask=False)
            logits = model.postprocess_masks(low_res, embedding.input_sizes[0], embedding.original_sizes[0])
            values.append(bce_dice_loss(logits[:, 0], target))
        return torch.cat(values)
    return loss


@dataclass
class DescentResult:
    """Prompts learned by `descend_prompts`: final values, losses and how each one stopped."""

    prompts: torch.Tensor  # (P, m, 256)
    losses: torch.Tensor  # (P,) at the step each stopped
    steps: torch.Tensor  # (P,) steps each ran
    plateaued: torch.Tensor  # (P,) bool: stopped by the plateau rule (else by max_steps)
    history: np.ndarray  # (steps, P) loss per step, NaN once a prompt stopped


class _Plateau:
    """Per-row early stopping: stop a row once its loss has not improved by more than `tolerance`
    for `patience` consecutive steps (the paper: 3e-4 over 100 steps).

    The reference is the loss at the last improvement larger than `tolerance`, so a slow but steady
    decline still counts once it adds up to more than `tolerance` (Keras' `min_delta` rule)."""

    def __init__(self, rows: int, tolerance: float, patience: int):
        self.reference = torch.full((rows,), math.inf)
        self.waited = torch.zeros(rows, dtype=torch.long)
        self.tolerance, self.patience = tolerance, patience

    def update(self, rows: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """Record `losses` of `rows`; return which of them have plateaued."""
        improved = losses < self.reference[rows] - self.tolerance
        self.reference[rows] = torch.where(improved, losses, self.reference[rows])
        self.waited[rows] = torch.where(improved, 0, self.waited[rows] + 1)
        return self.waited[rows] >= self.patience


def _check_schedule(lr: float, tolerance: float, patience: int, max_steps: int) -> None:
    for name, value, ok in (("lr", lr, lr > 0), ("tolerance", tolerance, tolerance >= 0),
                            ("patience", patience, isinstance(patience, int) and patience >= 1),
                            ("max_steps", max_steps, isinstance(max_steps, int) and max_steps >= 1)):
        if not ok:
            raise bad_argument(name, "a positive number" if name != "tolerance" else "a number >= 0", value)


def descend_prompts(loss_fn: BatchedLoss, init: torch.Tensor, lr: float = 2.0,
                    tolerance: float = 3e-4, patience: int = 100, max_steps: int = 2000) -> DescentResult:
    """Learn P prompts from `init` (P, m, 256) by gradient descent (Adam) on `loss_fn`, all at once.

    The non-variational principle of Fig. 4: z is a free parameter and only dL/dz moves it.
    Every step decodes the prompts still running in one batched call; a prompt leaves the
    batch when it plateaus (`_Plateau`), and keeps the value it had then.
    """
    _check_schedule(lr, tolerance, patience, max_steps)
    prompts = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([prompts], lr=lr)
    final = prompts.detach().clone()
    rows = init.shape[0]
    final_loss, steps = torch.full((rows,), math.nan), torch.zeros(rows, dtype=torch.long)
    plateau, running = _Plateau(rows, tolerance, patience), torch.arange(rows)
    plateaued, history = torch.zeros(rows, dtype=torch.bool), []
    for step in range(max_steps):
        losses = loss_fn(prompts[running])
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # rows are independent: each prompt gets its own gradient
        values = losses.detach().cpu()
        row_history = torch.full((rows,), math.nan)
        row_history[running] = values
        history.append(row_history.numpy())
        done = plateau.update(running, values)
        final_loss[running], steps[running] = values, step + 1
        final[running] = prompts.detach()[running]  # the values these losses belong to
        plateaued[running[done]] = True
        running = running[~done]
        if not len(running):
            break
        optimizer.step()  # rows that stopped are no longer read: their values were kept in `final`
    return DescentResult(final, final_loss, steps, plateaued, np.stack(history))


@dataclass
class DistributionResult:
    """A prompt distribution learned by `fit_prompt_distribution`."""

    mu: torch.Tensor  # (m, 256)
    sigma: torch.Tensor  # (m, 256)
    family: str
    steps: int
    plateaued: bool
    history: np.ndarray  # (steps,) the Monte Carlo loss of Eq. 10 per step


def fit_prompt_distribution(loss_fn: BatchedLoss, mu_init: torch.Tensor,
                            sigma_init: float, samples: int = 10, nu: float = NU, family: str = "student_t",
                            lr: float = 2.0, sigma_lr: float = 0.05, tolerance: float = 3e-4,
                            patience: int = 100, max_steps: int = 2000) -> DistributionResult:
    """Learn one prompt distribution (mu, sigma) for one object with Eq. 10 (K = `samples`).

    The variational principle of Fig. 4: dL/dmu and dL/dsigma, through the reparameterised
    samples, move mu and log sigma. Stops on the same plateau rule as `descend_prompts`.
    """
    _check_schedule(lr, tolerance, patience, max_steps)
    if not sigma_init > 0:
        raise bad_argument("sigma_init", "a positive number", sigma_init)
    mu = mu_init.detach().clone().requires_grad_(True)
    log_sigma = torch.full_like(mu, math.log(sigma_init)).requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": [mu], "lr": lr}, {"params": [log_sigma], "lr": sigma_lr}])
    plateau, history = _Plateau(1, tolerance, patience), []
    plateaued = False
    for _ in range(max_steps):
        prompts = sample_prompts(family, mu, log_sigma.exp(), samples, nu, event_dims=mu.ndim)
        loss = loss_fn(prompts).mean()  # Eq. 10: the mean loss of K samples
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if plateau.update(torch.tensor([0]), torch.tensor([history[-1]]))[0]:
            plateaued = True
            break
    return DistributionResult(mu.detach(), log_sigma.detach().exp(), family, len(history), plateaued,
                              np.array(history))



# ---- the landscape around a prompt -----------------------------------------------------


def _check_point(point: torch.Tensor, name: str = "center") -> torch.Tensor:
    if not torch.is_tensor(point) or not torch.is_floating_point(point) or point.ndim < 1:
        raise bad_argument(name, "a floating-point tensor (one point, no batch dimension)", point)
    return point.detach()


def _chunked(loss_fn: BatchedLoss, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """loss_fn over many points, `chunk` rows per call (memory), without autograd."""
    with torch.no_grad():
        return torch.cat([loss_fn(points[start:start + chunk]) for start in range(0, len(points), chunk)])


def random_directions(count: int, shape: Sequence[int], generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`count` random directions of unit Euclidean norm over the whole point (all tokens together)."""
    if not isinstance(count, int) or count < 1:
        raise bad_argument("count", "an int >= 1", count)
    directions = torch.randn((count, *shape), generator=generator, dtype=dtype)
    return directions / directions.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))


def slice_1d(loss_fn: BatchedLoss, center: torch.Tensor, direction: torch.Tensor,
             offsets: Sequence[float] | torch.Tensor, chunk: int = 256) -> np.ndarray:
    """L(center + t * direction) for every t in `offsets` (one batched evaluation)."""
    center = _check_point(center)
    if direction.shape != center.shape:
        raise bad_argument("direction", f"a tensor of the center's shape {tuple(center.shape)}", direction)
    t = torch.as_tensor(offsets, dtype=center.dtype).view(-1, *([1] * center.ndim))
    return _chunked(loss_fn, center + t * direction.to(center), chunk).cpu().numpy()


def slice_2d(loss_fn: BatchedLoss, center: torch.Tensor, directions: tuple[torch.Tensor, torch.Tensor],
             offsets: Sequence[float] | torch.Tensor, chunk: int = 256) -> np.ndarray:
    """L(center + a * d1 + b * d2) on the grid offsets x offsets: an (R, R) array, rows = a."""
    center = _check_point(center)
    first, second = (d.to(center) for d in directions)
    t = torch.as_tensor(offsets, dtype=center.dtype)
    a, b = torch.meshgrid(t, t, indexing="ij")
    expand = (-1, *([1] * center.ndim))
    points = center + a.reshape(expand) * first + b.reshape(expand) * second
    return _chunked(loss_fn, points, chunk).view(len(t), len(t)).cpu().numpy()


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
    base = float(_chunked(loss_fn, center[None], 1)[0].double())
    estimates, errors = [], []
    for sigma in sigmas:
        noise = float(sigma) * directions
        points = torch.cat([center + noise, center - noise])
        losses = _chunked(loss_fn, points, chunk).double()
        pair_means = (losses[: samples // 2] + losses[samples // 2:]) / 2 - base
        estimates.append(float(pair_means.mean()))
        errors.append(float(pair_means.std() / math.sqrt(samples // 2)))
    return np.array(estimates), np.array(errors)


__all__ = ["BatchedLoss", "DescentResult", "DistributionResult", "descend_prompts", "exact_laplacian",
           "fit_prompt_distribution", "hessian_vector_products", "hutchinson_laplacian", "noise_expectation",
           "object_prompt_loss", "random_directions", "slice_1d", "slice_2d"]
