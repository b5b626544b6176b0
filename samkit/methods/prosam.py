"""ProSAM (and its baseline VRP-SAM): prompt tokens predicted from a visual reference.

Given a reference image with a mask of some class and a target image, a *visual reference
prompt encoder* predicts m prompt tokens (B, m, 256) that make SAM segment that class in the
target; SAM itself stays frozen. VRP-SAM predicts the tokens directly (Eq. 3) and trains with
BCE + Dice (Eq. 4). ProSAM predicts a Student-t distribution over them (two linear heads for
mu and log sigma, Eq. 5), trains on K reparameterised samples (Eq. 6-7, Eq. 10) and prompts
SAM with the mean at inference. Equation numbers are the paper's
(`../shared/papers/prosam_002_*.txt`); Sec. 8 describes the encoder.

The single-object experiment of Fig. 4 (prompts as free parameters) is in `samkit.analysis.landscape`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samkit.cache import CachedEncoder
from samkit.datasets.fewshot import FewShotPairs, binary_mask, fold_classes
from samkit.datasets.readers import BACKGROUND
from samkit.datasets.specs import build_dataset
from samkit.errors import bad_argument
from samkit.images import image_sha256
from samkit.losses import bce_dice_loss  # Eq. 4
from samkit.lru import LruCache
from samkit.methods.base import Method, register_method
from samkit.models.base import ImageEmbedding, SamAdapter, masks_on_grid
from samkit.models.registry import load_model
from samkit.positions import sine_positions

VARIANTS = ("vrp", "student_t", "gaussian")  # VRP-SAM, ProSAM, ProSAM with a Gaussian (Table 4)
BACKBONES = ("sam", "resnet50")
NU = 5.0  # degrees of freedom of the paper's t-distribution
STRATEGIES = ("max_logits", "mean_logits", "max_binary", "mean_binary", "majority")  # Table 8


# ---- Eq. 5-7: sampling prompts ---------------------------------------------------------
def _event_size(mu: torch.Tensor, event_dims: int) -> int:
    if not isinstance(event_dims, int) or not 1 <= event_dims <= mu.ndim:
        raise bad_argument("event_dims", f"an int in [1, {mu.ndim}] (the trailing dims of one z)", event_dims)
    return math.prod(mu.shape[mu.ndim - event_dims:])


def student_t_prompts(mu: torch.Tensor, sigma: torch.Tensor, samples: int, nu: float = NU,
                      event_dims: int = 2) -> torch.Tensor:
    """`samples` draws z ~ t(mu, diag(sigma^2) / (1 + n/nu), nu + n) (Eq. 5): (samples, *mu.shape).

    One z is the last `event_dims` dims of mu (m tokens x 256 channels: n = m * 256); every z
    gets its own chi-square draw. Differentiable in mu and sigma (the reparameterisation trick).
    """
    if not isinstance(samples, int) or samples < 1:
        raise bad_argument("samples", "an int >= 1", samples)
    if sigma.shape != mu.shape:
        raise bad_argument("sigma", f"the shape of mu {tuple(mu.shape)}", sigma)
    n = _event_size(mu, event_dims)
    batch_shape = mu.shape[: mu.ndim - event_dims]
    epsilon = torch.randn((samples, *mu.shape), device=mu.device, dtype=mu.dtype)  # eps ~ N(0, I)
    dof = torch.tensor(nu + n, device=mu.device, dtype=torch.float32)  # float32 even under bf16 autocast
    delta = torch.distributions.Chi2(dof).sample((samples, *batch_shape))  # delta ~ chi^2(nu + n)
    mixing = torch.sqrt(dof / delta).to(mu.dtype).view(samples, *batch_shape, *([1] * event_dims))
    # Eq. 7 (the paper prints the square root around delta alone; this is the standard t draw
    # whose law is Eq. 5: a Gaussian scaled by sqrt((nu + n) / delta)).
    scale = sigma / math.sqrt(1 + n / nu)
    return mu + mixing * scale * epsilon


def gaussian_prompts(mu: torch.Tensor, sigma: torch.Tensor, samples: int) -> torch.Tensor:
    """`samples` draws z = mu + sigma * eps, eps ~ N(0, I) (the VAE form; Table 4's ablation)."""
    if not isinstance(samples, int) or samples < 1:
        raise bad_argument("samples", "an int >= 1", samples)
    return mu + sigma * torch.randn((samples, *mu.shape), device=mu.device, dtype=mu.dtype)


def student_t_variance(sigma: torch.Tensor | float, n: int, nu: float = NU) -> torch.Tensor | float:
    """Per-coordinate variance of Eq. 5: sigma^2 / (1 + n/nu) * (nu + n) / (nu + n - 2)."""
    return sigma ** 2 / (1 + n / nu) * (nu + n) / (nu + n - 2)


def sample_prompts(family: str, mu: torch.Tensor, sigma: torch.Tensor, samples: int, nu: float = NU,
                   event_dims: int = 2) -> torch.Tensor:
    """Draws from the `family` ("student_t" or "gaussian") distribution around mu."""
    if family == "student_t":
        return student_t_prompts(mu, sigma, samples, nu, event_dims)
    if family == "gaussian":
        return gaussian_prompts(mu, sigma, samples)
    raise bad_argument("family", "student_t or gaussian", family)


def noisy_tokens(tokens: torch.Tensor, noise: float, samples: int) -> torch.Tensor:
    """`samples` copies of (B, m, 256) tokens plus Gaussian noise of std `noise` times each prompt
    set's token RMS: (samples, B, m, 256). The fixed-size smoothing of Proposition 1 without a
    learned scale; noise = 0 returns the tokens themselves, once (K copies would all be equal)."""
    if not noise >= 0:
        raise bad_argument("noise", "a number >= 0 (times the token RMS)", noise)
    if noise == 0:
        return tokens[None]
    rms = tokens.detach().square().mean(dim=(-2, -1), keepdim=True).sqrt()  # a size, not a path for gradients
    return tokens + noise * rms * torch.randn((samples, *tokens.shape), device=tokens.device, dtype=tokens.dtype)


# ---- Sec. 8: the visual reference prompt encoder --------------------------------------
def _pseudo_mask(reference: torch.Tensor, reference_mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sec. 8.1: for every target pixel the best cosine similarity to a reference foreground pixel,
    min-max normalised to [0, 1] per image (PFENet's prior). Frozen features, no gradient."""
    with torch.no_grad():
        ref = F.normalize(reference.flatten(2), dim=1)  # (B, C, hw)
        tgt = F.normalize(target.flatten(2), dim=1)
        weights = reference_mask.flatten(1)  # (B, hw) foreground share of each grid cell
        foreground = weights >= 0.5 * weights.max(dim=1, keepdim=True).values.clamp_min(1e-6)
        similarity = torch.einsum("bcr,bct->brt", ref, tgt).masked_fill(~foreground[..., None], -2.0)
        best = similarity.max(dim=1).values  # (B, hw)
        low, high = best.min(1, keepdim=True).values, best.max(1, keepdim=True).values
        return ((best - low) / (high - low).clamp_min(1e-6)).view(target.shape[0], 1, *target.shape[2:])


class FeatureAugmentation(nn.Module):
    """Sec. 8.1: enhanced reference and target features from frozen features and the reference mask."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.project = nn.Conv2d(in_dim, dim, 1)  # the learnable pointwise conv after the frozen encoder
        self.reference_fuse = nn.Conv2d(2 * dim + 1, dim, 1)  # [F_Ir, F_Mr, M_r]
        self.target_fuse = nn.Conv2d(2 * dim + 1, dim, 1)  # [F_It, F_Mr, M_t^pseudo]

    def forward(self, reference: torch.Tensor, reference_mask: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen (B, C, h, w) features and a (B, 1, h, w) mask -> (F_r^v, F_t^v, pseudo-mask)."""
        f_ref, f_tgt = self.project(reference), self.project(target)
        area = reference_mask.sum((2, 3), keepdim=True).clamp_min(1e-6)
        annotation = (f_ref * reference_mask).sum((2, 3), keepdim=True) / area  # F_Mr: masked average pooling
        pseudo = _pseudo_mask(reference, reference_mask, target)
        annotation_map = annotation.expand_as(f_ref)
        enhanced_ref = self.reference_fuse(torch.cat([f_ref, annotation_map, reference_mask], 1))
        enhanced_tgt = self.target_fuse(torch.cat([f_tgt, annotation_map, pseudo], 1))
        return enhanced_ref, enhanced_tgt, pseudo


class _Attend(nn.Module):
    """Multi-head attention with a residual and a LayerNorm (post-norm, as in DETR's decoder)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.norm(queries + self.attention(queries, keys, values, need_weights=False)[0])


class VisualReferencePromptEncoder(nn.Module):
    """VRP-SAM's prompt encoder (Sec. 3.2, 8): m learnable queries attend to the enhanced reference
    features, then to the enhanced target features -> (B, m, 256) prompt tokens (Eq. 3).

    `variational=True` is ProSAM's encoder: the same body with two linear heads for mu and
    log sigma (Sec. 4.3) instead of one output layer.
    """

    def __init__(self, in_dim: int = 256, dim: int = 256, tokens: int = 50, heads: int = 8,
                 token_dim: int = 256, variational: bool = False, log_sigma_init: float = 0.0):
        super().__init__()
        for name, value in (("tokens", tokens), ("dim", dim), ("in_dim", in_dim)):
            if not isinstance(value, int) or value < 1:
                raise bad_argument(name, "an int >= 1", value)
        if dim % heads or dim % 4:
            raise bad_argument("dim", f"a multiple of heads = {heads} and of 4", dim)
        self.augment = FeatureAugmentation(in_dim, dim)
        self.queries = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.to_reference, self.among_reference = _Attend(dim, heads), _Attend(dim, heads)
        self.to_target, self.among_target = _Attend(dim, heads), _Attend(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mlp_norm = nn.LayerNorm(dim)
        self.variational = variational
        self.mean_head = nn.Linear(dim, token_dim)  # VRP-SAM's output layer; ProSAM's mu head
        self.log_sigma_head = nn.Linear(dim, token_dim) if variational else None
        if self.log_sigma_head is not None:  # the paper does not say; sigma starts near exp(log_sigma_init)
            nn.init.constant_(self.log_sigma_head.bias, log_sigma_init)
        self.dim = dim

    def forward(self, reference: torch.Tensor, reference_mask: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Frozen features of reference and target (B, C, h, w), the reference mask on that grid
        (B, 1, h, w) -> (mu or the tokens (B, m, 256), log sigma (B, m, 256) or None, pseudo-mask)."""
        enhanced_ref, enhanced_tgt, pseudo = self.augment(reference, reference_mask, target)
        # Sec. 8 leaves the code open: sine positions over the grid's corners, temperature 100.
        position = sine_positions(*target.shape[2:], self.dim, temperature=100.0, grid="corners").to(target)
        ref_tokens = enhanced_ref.flatten(2).transpose(1, 2)  # (B, hw, dim)
        tgt_tokens = enhanced_tgt.flatten(2).transpose(1, 2)
        queries = self.queries.expand(target.shape[0], -1, -1)
        queries = self.to_reference(queries, ref_tokens + position, ref_tokens)  # Q'_r
        queries = self.among_reference(queries, queries, queries)
        queries = self.to_target(queries, tgt_tokens + position, tgt_tokens)  # Q'_t
        queries = self.among_target(queries, queries, queries)
        queries = self.mlp_norm(queries + self.mlp(queries))
        log_sigma = self.log_sigma_head(queries) if self.log_sigma_head is not None else None
        return self.mean_head(queries), log_sigma, pseudo


# ---- data: episodes and masks on the feature grid -------------------------------------
def mask_on_grid(mask: np.ndarray, input_size: tuple[int, int], image_size: int,
                 grid: tuple[int, int]) -> torch.Tensor:
    """An (H, W) mask -> the share of each cell of SAM's (h, w) feature grid it covers, (1, h, w)."""
    return masks_on_grid(np.asarray(mask)[None], input_size, image_size, grid)


def _vocabulary(dataset: Sequence) -> tuple[str, ...]:
    vocabulary = getattr(dataset, "vocabulary", None)
    if vocabulary is not None:
        return tuple(vocabulary)
    return (BACKGROUND, *dataset.class_names)  # ShapeScenes: its classes, 1-based as in the folds


def episode_classes(dataset: Sequence, fold: int | None, n_folds: int, novel: bool) -> tuple[str, ...]:
    """The classes episodes draw from: every class of `dataset` (fold None), else fold `fold`'s
    novel classes (`novel`) or the other folds' classes (base)."""
    names = _vocabulary(dataset)[1:]
    if fold is None:
        return tuple(names)
    held_out = {names[c - 1] for c in fold_classes(len(names), fold, n_folds)}
    return tuple(name for name in names if (name in held_out) == novel)


def episode_items(pairs: FewShotPairs, indices: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """One-shot episodes of `pairs` (all, or `indices`) as the method's batch items."""
    items = []
    for index in range(len(pairs)) if indices is None else indices:
        episode = pairs[index]
        items.append({"class_name": episode.class_name, "reference_image": episode.reference[0].image,
                      "reference_mask": episode.reference_masks[0], "target_image": episode.target.image,
                      "target_mask": episode.target_mask, "target_index": episode.target_index})
    return items


@register_method("prosam")
class ProSAM(Method):
    """VRP-SAM (`variant="vrp"`) or ProSAM (`"student_t"`, or `"gaussian"` for Table 4) on one-shot episodes.

    train / test: data set specs (`samkit.datasets.specs`). fold: None trains on every class of
    `train` and tests on every class of `test` (ShapeScenes: base -> novel); an int holds out that
    fold's classes (PASCAL-5i / COCO-20i). tokens: m; samples: K; nu: the t's degrees of freedom.
    noise: VRP-SAM only, Gaussian noise of std `noise` x the token RMS on its tokens while training
    (K = `samples` draws; `noisy_tokens`), the dose of ProSAM's smoothing without a learned scale.
    backbone: "sam" uses the frozen SAM image embedding (from the cache) as the encoder's features;
    "resnet50" a frozen torchvision ResNet-50 (layer2 + layer3, VRP-SAM's choice) when
    `backbone_weights` (a torchvision state dict) exists, else SAM's with a warning.
    """

    def __init__(self, train: dict[str, Any], test: dict[str, Any], variant: str = "student_t",
                 fold: int | None = None, n_folds: int = 4, model: str = "tinysam", checkpoint: str | None = None,
                 tokens: int = 50, samples: int = 10, nu: float = NU, dim: int = 256, heads: int = 8,
                 log_sigma_init: float = 0.0, train_episodes: int | None = None, test_episodes: int = 1000,
                 eval_batch: int = 8, episode_seed: int = 0, backbone: str = "sam",
                 backbone_weights: str | None = None, noise: float = 0.0, device: torch.device | str = "cpu"):
        super().__init__()
        if variant not in VARIANTS:
            raise bad_argument("variant", f"one of {VARIANTS}", variant)
        if backbone not in BACKBONES:
            raise bad_argument("backbone", f"one of {BACKBONES}", backbone)
        if not isinstance(samples, int) or samples < 1:
            raise bad_argument("samples", "an int >= 1", samples)
        if not (isinstance(noise, (int, float)) and noise >= 0) or (noise and variant != "vrp"):
            raise bad_argument("noise", "a number >= 0, and 0 unless variant is vrp (ProSAM learns its scale)", noise)
        self.noise = float(noise)
        self.adapter: SamAdapter = load_model(model, checkpoint=checkpoint, device=device)
        self.adapter.module.requires_grad_(False)  # SAM is frozen; kept off the module tree (not saved)
        self.encoder_cache = CachedEncoder(self.adapter, memory_items=8192)
        self.backbone = _ResNetFeatures(self.adapter, backbone_weights) if backbone == "resnet50" else None
        if self.backbone is not None and not self.backbone.ready:
            self.backbone = None
        in_dim = self.backbone.channels if self.backbone is not None else self.adapter.token_dim
        self.variant, self.samples, self.nu = variant, samples, nu
        self._encoder_args = dict(in_dim=in_dim, dim=dim, tokens=tokens, heads=heads, token_dim=self.adapter.token_dim,
                                  variational=variant != "vrp", log_sigma_init=log_sigma_init)
        self.prompt_encoder = VisualReferencePromptEncoder(**self._encoder_args)
        self.train_data, self.test_data = build_dataset(train, "train"), build_dataset(test, "test")
        train_classes = episode_classes(self.train_data, fold, n_folds, novel=False)
        test_classes = episode_classes(self.test_data, fold, n_folds, novel=fold is not None)
        self.train_pairs = FewShotPairs(self.train_data, train_classes, shots=1, n=1, seed=episode_seed)
        self.test_pairs = FewShotPairs(self.test_data, test_classes, shots=1, n=test_episodes, seed=episode_seed)
        self.train_episodes = train_episodes or len(self.train_data)
        self.eval_batch = eval_batch

    def __len__(self) -> int:
        return self.train_episodes

    def reset_encoder(self, seed: int) -> None:
        """A fresh prompt encoder, initialised from `seed` (SAM and the cached embeddings are kept)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.prompt_encoder = VisualReferencePromptEncoder(**self._encoder_args).to(self.adapter.device)

    # ---- data --------------------------------------------------------------------------
    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """A fresh one-shot episode every epoch: a base class, then a reference and a target image with it."""
        pairs = self.train_pairs
        class_name = pairs.classes[int(rng.integers(len(pairs.classes)))]
        reference_index, target_index = rng.choice(pairs.images_of[class_name], size=2, replace=False)
        reference, target = self.train_data[int(reference_index)], self.train_data[int(target_index)]
        return {"class_name": class_name, "reference_image": reference.image, "target_image": target.image,
                "reference_mask": binary_mask(reference, class_name), "target_mask": binary_mask(target, class_name)}

    # ---- model -------------------------------------------------------------------------
    def features(self, images: list[np.ndarray]) -> tuple[ImageEmbedding, torch.Tensor]:
        """SAM's embeddings (cached; the encoder runs once per image) and the prompt encoder's frozen features."""
        embedding = self.encoder_cache.embed(images)[0]
        feats = embedding.image_embed if self.backbone is None else self.backbone(images, embedding.image_embed.shape[-2:])
        return embedding, feats

    def distribution(self, batch: list[dict[str, Any]]) -> tuple[ImageEmbedding, torch.Tensor, torch.Tensor | None,
                                                                  torch.Tensor]:
        """Target embeddings, mu (B, m, 256), log sigma (or None) and the (B, 1, h, w) pseudo-masks."""
        reference, ref_feats = self.features([b["reference_image"] for b in batch])
        target, tgt_feats = self.features([b["target_image"] for b in batch])
        grid = tuple(ref_feats.shape[-2:])
        masks = torch.stack([mask_on_grid(b["reference_mask"], size, self.adapter.image_size, grid)
                             for b, size in zip(batch, reference.input_sizes)]).to(ref_feats)
        mu, log_sigma, pseudo = self.prompt_encoder(ref_feats, masks, tgt_feats)
        return target, mu, log_sigma, pseudo

    def sample(self, mu: torch.Tensor, log_sigma: torch.Tensor | None, samples: int) -> torch.Tensor:
        """(samples, B, m, 256) prompts: the tokens themselves for VRP-SAM (noisy copies while training
        with `noise`), Eq. 7 draws for ProSAM."""
        if log_sigma is None:
            return noisy_tokens(mu, self.noise if self.training else 0.0, samples)
        return sample_prompts(self.variant, mu, log_sigma.exp(), samples, self.nu, event_dims=2)

    def mask_logits(self, target: ImageEmbedding, prompts: torch.Tensor) -> list[torch.Tensor]:
        """(S, B, m, 256) prompts -> per target image (S, H, W) logits, from ONE batched decoder call."""
        samples, batch = prompts.shape[:2]
        rows = [b for b in range(batch) for _ in range(samples)]
        sets = prompts.transpose(0, 1).reshape(batch * samples, *prompts.shape[2:])
        low_res, _ = self.adapter.decode(target.select(rows), sets, multimask=False)
        low_res = low_res.view(batch, samples, *low_res.shape[2:])
        return [self.adapter.postprocess_masks(low_res[b][None], target.input_sizes[b], target.original_sizes[b])[0]
                for b in range(batch)]

    def forward(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4 for VRP-SAM; Eq. 10 (the mean over K samples of Eq. 4) for ProSAM. Mean over episodes."""
        target, mu, log_sigma, _ = self.distribution(batch)
        logits = self.mask_logits(target, self.sample(mu, log_sigma, self.samples))
        losses = [bce_dice_loss(x, torch.as_tensor(b["target_mask"]).to(x)).mean() for x, b in zip(logits, batch)]
        logs = {}
        if log_sigma is not None:  # the noise actually injected, per coordinate (Eq. 5's scale)
            n = mu.shape[-2] * mu.shape[-1]
            shrink = math.sqrt(1 + n / self.nu) if self.variant == "student_t" else 1.0
            logs["noise_std"] = float(log_sigma.detach().exp().mean() / shrink)
        return torch.stack(losses).mean(), logs

    # ---- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: list[dict[str, Any]], samples: int = 0) -> dict[str, Any]:
        """Logits of the mean prompt (B x (H, W)), the pseudo-masks, and with `samples` > 0 the
        logits of that many draws (B x (K, H, W)) for Table 8's strategies."""
        target, mu, log_sigma, pseudo = self.distribution(batch)
        draws = self.sample(mu, log_sigma, samples) if samples and log_sigma is not None else None
        prompts = mu[None] if draws is None else torch.cat([mu[None], draws])  # one decoder call for all
        logits = self.mask_logits(target, prompts)
        return {"mean": [x[0] for x in logits], "samples": None if draws is None else [x[1:] for x in logits],
                "pseudo": pseudo[:, 0]}

    def score(self, batches: Iterable[list[dict[str, Any]]], samples: int = 0) -> dict[str, Any]:
        """Test the mean prompt on episodes given as batches of items: IoU per episode, mIoU (per class:
        total intersection / total union; then the mean over classes, the few-shot convention), pixel
        TPR/TNR/FPR/FNR of the mean prompt (Table 6) and, with `samples` > 0 for ProSAM, the mIoU of
        Table 8's ways to merge that many sampled masks."""
        threshold = self.adapter.mask_threshold
        names = ["mean"] + (list(STRATEGIES) if samples and self.variant != "vrp" else [])
        inter = {name: {} for name in names}
        union = {name: {} for name in names}
        ious, confusion = [], np.zeros(4)  # tp, fp, fn, tn of the mean prompt
        for items in batches:
            out = self.predict(items, samples=samples if len(names) > 1 else 0)
            for b, item in enumerate(items):
                truth = torch.as_tensor(item["target_mask"], device=out["mean"][b].device)
                masks = {"mean": out["mean"][b] > threshold}
                if out["samples"] is not None:
                    masks.update(merge_samples(out["samples"][b], threshold))
                for name, mask in masks.items():
                    c = item["class_name"]
                    inter[name][c] = inter[name].get(c, 0) + int((mask & truth).sum())
                    union[name][c] = union[name].get(c, 0) + int((mask | truth).sum())
                mean = masks["mean"]
                counts = [int((mean & truth).sum()), int((mean & ~truth).sum()), int((~mean & truth).sum()),
                          int((~mean & ~truth).sum())]
                confusion += counts
                ious.append(counts[0] / sum(counts[:3]) if sum(counts[:3]) else 1.0)  # both empty: right
        miou = {name: float(np.mean([inter[name][c] / max(1, union[name][c]) for c in inter[name]])) for name in names}
        tp, fp, fn, tn = (float(count) for count in confusion)
        return {"miou": miou["mean"], "iou": np.array(ious),
                "rates": {"TPR": tp / max(1.0, tp + fn), "TNR": tn / max(1.0, tn + fp),
                          "FPR": fp / max(1.0, tn + fp), "FNR": fn / max(1.0, tp + fn)},
                "strategies": {name: miou[name] for name in names if name != "mean"}}

    def evaluate(self) -> dict[str, float]:
        """`score` on the test episodes (drawn batch by batch): mIoU, the pixel rates and, for ProSAM,
        Table 8's merges of K draws."""
        batches = (episode_items(self.test_pairs, range(start, min(len(self.test_pairs), start + self.eval_batch)))
                   for start in range(0, len(self.test_pairs), self.eval_batch))
        scores = self.score(batches, samples=self.samples if self.variant != "vrp" else 0)
        return {"miou": scores["miou"], **scores["rates"],
                **{f"miou_{name}": value for name, value in scores["strategies"].items()}}

    def describe(self) -> str:
        features = "resnet50" if self.backbone is not None else f"{self.adapter.name} embeddings"
        return f"prosam[{self.variant}] on {features}: " + super().describe()


def merge_samples(logits: torch.Tensor, threshold: float = 0.0) -> dict[str, torch.Tensor]:
    """Table 8: K sampled (K, H, W) logit masks merged into one binary mask, five ways."""
    binary = logits > threshold
    votes = binary.float().mean(0)
    return {"max_logits": logits.max(0).values > threshold, "mean_logits": logits.mean(0) > threshold,
            "max_binary": binary.any(0), "mean_binary": votes >= 0.5,
            "majority": votes > 0.5}  # mean_binary keeps ties (K/2 votes), a majority needs more than half


class _ResNetFeatures:
    """A frozen torchvision ResNet-50 (layer2 and layer3 concatenated, as in VRP-SAM) on SAM's input frame,
    pooled to SAM's feature grid; features are kept in memory by image hash."""

    channels = 512 + 1024

    def __init__(self, adapter: SamAdapter, weights: str | None):
        import torchvision

        path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-0676ba61.pth"
        self.ready = path.exists()
        if not self.ready:
            warnings.warn(f"backbone: no ResNet-50 weights at {path}; using SAM's image embeddings instead",
                          stacklevel=3)
            return
        net = torchvision.models.resnet50(weights=None)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net = net.eval().requires_grad_(False).to(adapter.device)
        self.adapter, self.memory = adapter, LruCache(8192)

    def __call__(self, images: list[np.ndarray], grid: tuple[int, int]) -> torch.Tensor:
        keys = [image_sha256(image) for image in images]
        missing = [i for i, key in enumerate(keys) if self.memory.get(key) is None]
        if missing:
            with torch.no_grad():
                pixels, _ = self.adapter.preprocess([images[i] for i in missing])  # SAM's ImageNet normalisation
                net = self.net
                x = net.maxpool(net.relu(net.bn1(net.conv1(pixels))))
                layer2 = net.layer2(net.layer1(x))
                layer3 = net.layer3(layer2)
                feats = torch.cat([F.adaptive_avg_pool2d(layer2, tuple(grid)),
                                   F.adaptive_avg_pool2d(layer3, tuple(grid))], 1)
            for row, i in enumerate(missing):
                self.memory.put(keys[i], feats[row:row + 1])
        return torch.cat([self.memory.get(key) for key in keys])


__all__ = ["BACKBONES", "NU", "STRATEGIES", "VARIANTS", "FeatureAugmentation", "ProSAM",
           "VisualReferencePromptEncoder", "bce_dice_loss", "episode_classes", "episode_items", "gaussian_prompts", "mask_on_grid",
           "merge_samples", "noisy_tokens", "sample_prompts", "student_t_prompts", "student_t_variance"]
