"""CPC-SAM: causal prompt calibration (CaPL) and bi-level fine-tuning of SAM (CVPR 2025).

The paper's authors did not release CaPL (their public repository is a fork of BLO-SAM without
random-annotation prompts or the consistency loss); this module implements the paper as
written, with the reading of the under-specified parts stated where they are made.

CaPL, f_theta, has two parts:
- the **task causal module** re-weights each prompt token with a 2-layer MLP. It is trained on
  N_t = 2 random-annotation prompt sets per sample, so only what the sets agree on (the
  object, not the annotator's error) helps all of them: Eq. 1.
- the **entity causal module** outputs a calibration Xi of the decoder's token-to-image and
  image-to-token attention (zero on prompt-prompt attention), sparse through an L1 penalty,
  and trained so that each entity's prompt attends to that entity: Eq. 2. Here Xi is a
  low-rank bilinear map of (prompt token, image feature), added to the attention logits.

SAM (LoRA) and CaPL are optimised by one of two schedules. `schedule="two_stage"` is the
paper's own account (App. D, F.4): stage 1 keeps SAM fixed while CaPL learns on
L_CaPL = L_task + L_entity for `capl_steps` optimiser steps; stage 2 locks CaPL and moves SAM's
LoRA on L_SAM + lambda_en * L_entity. `schedule="alternating"` is the first-order reading of
Eq. 4: even steps move CaPL, odd steps SAM.

With `prompt_draw="confounded"` the N_t random-annotation sets carry a task-irrelevant factor
(`samkit.datasets.confounded_boxes`): set i is drawn in environment environments[i % len], so
sets from different environments disagree exactly where the factor acts. `box_context` gives
the task module what is under the box (the mean image feature), which its weighting needs to
tell a box's error from the object.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samkit.errors import bad_argument
from samkit.methods.base import register_method
from samkit.methods.finetune import Finetune, mask_loss, with_context, zero_output_mlp
from samkit.models.base import ImageEmbedding, SamAdapter
from samkit.prompts import random_annotation_box

VARIANTS = ("fixed", "learnable", "task", "causal")  # Fig. 6: the prompt types compared
SCHEDULES = ("alternating", "two_stage")


class TaskCausalModule(nn.Module):
    """Re-weights prompt tokens: t' = w * t with w = 2 sigmoid(MLP(t, context)) in (0, 2), w = 1 at
    start; the optional context (`context_dim`) is what lies under the prompt, e.g. its box's mean
    image feature."""

    def __init__(self, dim: int = 256, hidden: int = 256, context_dim: int = 0):
        super().__init__()
        self.mlp = zero_output_mlp(dim + context_dim, hidden, dim)

    def weights(self, tokens: Tensor, context: Tensor | None = None) -> Tensor:
        """w, one weight per token coordinate, in (0, 2)."""
        return 2 * torch.sigmoid(self.mlp(with_context(tokens, context)))

    def forward(self, tokens: Tensor, context: Tensor | None = None) -> Tensor:
        return tokens * self.weights(tokens, context)


class EntityCausalModule(nn.Module):
    """One attention calibration Xi per cross-attention of the decoder.

    Xi[b, n, p] = <g(token_n), h(pixel_p)> / sqrt(rank) for prompt tokens n and image pixels p;
    rows of SAM's own output tokens are zero (only prompt-image similarities are calibrated).
    """

    def __init__(self, attentions: int, dim: int = 256, rank: int = 16):
        super().__init__()
        self.rank = rank
        self.token_maps = nn.ModuleList(nn.Linear(dim, rank) for _ in range(attentions))
        self.pixel_maps = nn.ModuleList(nn.Linear(dim, rank) for _ in range(attentions))
        for layer in self.token_maps:  # Xi = 0 at start: SAM's own attention
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, prompt_tokens: Tensor, image_embed: Tensor, output_tokens: int) -> list[Tensor]:
        """(B, N, C) prompt tokens, (B, C, h, w) image -> a (B, output_tokens + N, h*w) Xi per attention."""
        pixels = image_embed.flatten(2).transpose(1, 2)  # (B, h*w, C)
        xis = []
        for token_map, pixel_map in zip(self.token_maps, self.pixel_maps):
            xi = token_map(prompt_tokens) @ pixel_map(pixels).transpose(1, 2) / math.sqrt(self.rank)
            xis.append(F.pad(xi, (0, 0, output_tokens, 0)))  # zero rows for SAM's output tokens
        return xis


class CalibratedAttention(nn.Module):
    """segment_anything's Attention, with Xi added to its logits (and the attention kept)."""

    def __init__(self, attention: nn.Module, xi: Tensor, transpose: bool):
        super().__init__()
        self.attention, self.xi, self.transpose = attention, xi, transpose
        self.weights: Tensor | None = None

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        a = self.attention
        q = a._separate_heads(a.q_proj(q), a.num_heads)
        k = a._separate_heads(a.k_proj(k), a.num_heads)
        v = a._separate_heads(a.v_proj(v), a.num_heads)
        logits = q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])
        xi = self.xi.transpose(1, 2) if self.transpose else self.xi  # image-to-token sees Xi transposed
        self.weights = torch.softmax(logits + xi[:, None], dim=-1)
        return a.out_proj(a._recombine_heads(self.weights @ v))


@contextmanager
def calibrated(model: SamAdapter, xis: Sequence[Tensor]) -> Iterator[CalibratedAttention]:
    """Within the block, the decoder's cross-attentions add Xi (Eq. 2); yields the final one.

    The attentions are swapped in place, so the decoder must take its general path meanwhile:
    the shared-image fast path reads the attention weights directly (the adapter's
    `shared_image_decoding` is switched off by the method, see `CausalPromptCalibration`)."""
    places = model.decoder_cross_attentions()
    originals = [getattr(owner, name) for owner, name, _ in places]
    wrapped = [CalibratedAttention(original, xi, transpose)
               for original, xi, (_, _, transpose) in zip(originals, xis, places)]
    try:
        for (owner, name, _), module in zip(places, wrapped):
            setattr(owner, name, module)
        yield wrapped[-1]
    finally:
        for (owner, name, _), original in zip(places, originals):
            setattr(owner, name, original)


def attention_loss(attention: Tensor, masks: Tensor, output_tokens: int) -> Tensor:
    """L_SAM(Xi^e) of Eq. 2: cross-entropy of each entity's mask (as a distribution over
    pixels) under its prompt tokens' attention to the image (heads and tokens averaged).

    attention: (B, heads, tokens, h*w); masks: (B, h, w) entity masks at the embedding's size.
    """
    attended = attention[:, :, output_tokens:].mean(dim=(1, 2))  # (B, h*w), sums to 1
    target = masks.flatten(1)
    target = target / target.sum(1, keepdim=True).clamp(min=1e-6)
    return -(target * attended.clamp(min=1e-8).log()).sum(1).mean()


@register_method("cpc")
class CausalPromptCalibration(Finetune):
    """CPC-SAM on top of the `finetune` recipe (same data specs, LoRA settings and evaluation).

    variant: "causal" (CaPL: task + entity modules, bi-level), "task" (task module only),
    "learnable" (a learned token added to the prompts, trained with SAM, no causal losses) or
    "fixed" (plain box prompts: the finetune baseline). n_sets: N_t random-annotation prompt
    sets per sample. lambda_xi and lambda_en: the weights of Eq. 2 and Eq. 4.
    """

    def __init__(self, train: dict[str, Any], eval_base: dict[str, Any], eval_novel: dict[str, Any] | None = None,
                 variant: str = "causal", n_sets: int = 2, lambda_xi: float = 0.4, lambda_en: float = 0.6,
                 xi_rank: int = 16, schedule: str = "alternating", capl_steps: int = 0, **finetune_args: Any):
        if variant not in VARIANTS:
            raise bad_argument("variant", f"one of {VARIANTS}", variant)
        if not isinstance(n_sets, int) or n_sets < 1:
            raise bad_argument("n_sets", "an int >= 1", n_sets)
        if schedule not in SCHEDULES:
            raise bad_argument("schedule", f"one of {SCHEDULES}", schedule)
        if not isinstance(capl_steps, int) or capl_steps < 0 or (schedule == "two_stage" and capl_steps == 0):
            raise bad_argument("capl_steps", "an int >= 1: the optimiser steps of stage 1 (schedule two_stage)",
                               capl_steps)
        super().__init__(train, eval_base, eval_novel, **finetune_args)
        self.variant, self.n_sets, self.lambda_xi, self.lambda_en = variant, n_sets, lambda_xi, lambda_en
        self.schedule, self.capl_steps = schedule, capl_steps
        dim = self.adapter.token_dim
        self.output_tokens = self.adapter.output_tokens  # IoU token + mask tokens
        self.task_module = (TaskCausalModule(dim, context_dim=dim if self.box_context else 0)
                            if variant in ("task", "causal") else None)
        self.entity_module = (EntityCausalModule(len(self.adapter.decoder_cross_attentions()), dim, xi_rank)
                              if variant == "causal" else None)
        if self.entity_module is not None:  # `calibrated` swaps the decoder's attentions: general path
            self.adapter.shared_image_decoding = False
        self.learned_token = nn.Parameter(torch.zeros(1, 1, dim)) if variant == "learnable" else None
        self.use_capl = True  # False: the same fine-tuned SAM on raw prompts (a control at test time)
        self.capl_names = {name for name, p in self.named_parameters()
                           if p.requires_grad and name.split(".")[0] in ("task_module", "entity_module")}

    # ---- data: N_t random-annotation prompt sets per sample ---------------------------------
    def train_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        sample = self.train_data[index]
        masks = sample.instance_masks[sample.instance_masks.any(axis=(1, 2))]
        masks = masks[np.sort(rng.permutation(len(masks))[: self.instances_per_image])]
        if self.prompt_draw == "confounded":  # set i in environment environments[i % len]
            boxes = [self.confounded_set(sample, masks, self.environments[i % len(self.environments)], rng)
                     for i in range(self.n_sets)]
        else:
            boxes = [[random_annotation_box(m, rng) for m in masks] for _ in range(self.n_sets)]
        return {"image": sample.image, "masks": masks,
                "boxes": np.array(boxes, dtype=np.float32).reshape(self.n_sets, -1, 4)}

    # ---- the causal prompt ---------------------------------------------------------------------
    def calibrated_logits(self, embedding: ImageEmbedding, boxes: list[np.ndarray]
                          ) -> tuple[list[Tensor], Tensor | None, list[Tensor]]:
        """Box prompts -> CaPL -> decoder: per-image mask logits, the final token-to-image
        attention (for Eq. 2) and the Xi maps (for the L1 penalty)."""
        sparse, dense = self.box_tokens(embedding, boxes)
        if self.task_module is not None and self.use_capl:
            sparse = self.task_module(sparse, self.box_contexts(embedding, boxes))  # Eq. 1's re-weighting
        if self.learned_token is not None and self.use_capl:
            sparse = sparse + self.learned_token
        rows = [i for i, b in enumerate(boxes) for _ in range(len(b))]
        per_prompt = embedding.select(rows)
        if self.entity_module is None or not self.use_capl:
            low_res, _ = self.adapter.decode(per_prompt, sparse, dense, multimask=False)
            return self.per_image_logits(low_res, embedding, boxes), None, []
        xis = self.entity_module(sparse, per_prompt.image_embed.to(sparse), self.output_tokens)
        with calibrated(self.adapter, xis) as final_attention:  # Eq. 2's calibration
            low_res, _ = self.adapter.decode(per_prompt, sparse, dense, multimask=False)
        return self.per_image_logits(low_res, embedding, boxes), final_attention.weights, xis

    def mask_logits(self, embedding: ImageEmbedding, boxes: list[np.ndarray]) -> list[Tensor]:
        """What evaluation calls: the calibrated model on any box prompts."""
        return self.calibrated_logits(embedding, boxes)[0]

    # ---- losses (Eq. 1 to 4) --------------------------------------------------------------------
    def forward(self, batch: list[dict[str, Any]]) -> tuple[Tensor, dict[str, float]]:
        present = [s for s in batch if len(s["masks"])]
        if not present:
            return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad), {}
        embedding = self.embed([s["image"] for s in present])
        # All N_t prompt sets of all images in one decoder call: set i of image j is row (i, j).
        images = [j for _ in range(self.n_sets) for j in range(len(present))]
        boxes = [present[j]["boxes"][i] for i in range(self.n_sets) for j in range(len(present))]
        logits, attention, xis = self.calibrated_logits(embedding.select(images), boxes)
        masks = [torch.as_tensor(present[j]["masks"]).to(logits[0]) for j in images]
        per_set = torch.stack([mask_loss(x, m) for x, m in zip(logits, masks)]).view(self.n_sets, -1)
        # Eq. 1: L_task = sum over the N_t prompt sets of L_SAM (each set's loss a mean over images)
        loss_task = per_set.sum(0).sum() / len(batch)
        loss_sam = per_set.mean(0).sum() / len(batch)  # Eq. 3: SAM's segmentation loss
        logs = {"loss_sam": float(loss_sam.detach())}
        if attention is None:  # fixed / learnable / task variants: no entity module
            # two stages: the task loss while CaPL learns; alternating: one level, the task loss if CaPL exists
            task = self.capl_step if self.schedule == "two_stage" else self.task_module is not None
            return (loss_task if task else loss_sam), logs
        # Eq. 2: L_entity = sum_e L_SAM(Xi^e) + lambda_Xi ||Xi^e||_1, one entity per prompt set
        size = embedding.image_embed.shape[-2:]
        small_masks = torch.cat([F.interpolate(m[:, None], size=size, mode="area")[:, 0] for m in masks])
        l1 = torch.stack([xi.abs().mean() for xi in xis]).sum()
        loss_entity = attention_loss(attention, small_masks, self.output_tokens) + self.lambda_xi * l1
        logs.update(loss_entity=float(loss_entity.detach()), xi_l1=float(l1.detach()))
        if self.capl_step:  # Eq. 4's lower level: theta' = argmin L_CaPL = L_task + L_entity
            return loss_task + loss_entity, logs
        return loss_sam + self.lambda_en * loss_entity, logs  # Eq. 4's upper level, for SAM (LoRA)

    @property
    def capl_step(self) -> bool:
        """Whether this optimiser step moves CaPL (else SAM): the first `capl_steps` steps in the
        two-stage schedule; the even steps when alternating (with an entity module)."""
        if self.schedule == "two_stage":
            return bool(self.capl_names) and self.global_step < self.capl_steps
        return self.entity_module is not None and self.global_step % 2 == 0

    def before_optimizer_step(self) -> None:
        if self.schedule == "alternating" and self.entity_module is None:
            return
        for name, parameter in self.named_parameters():
            if parameter.requires_grad and (name in self.capl_names) != self.capl_step:
                parameter.grad = None  # the other level's parameters stay where they are

    @torch.no_grad()
    def movement(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> dict[str, float]:
        """How far CaPL is from the identity on these prompts: the root mean square of w - 1 (the
        task module's weights) and the mean |Xi| (the entity module's calibration); 0 at the start."""
        self.eval()
        boxes = [np.asarray(b, dtype=np.float32) for b in boxes]
        embedding = self.embed(images)
        sparse, _ = self.box_tokens(embedding, boxes)
        w_rms = xi = 0.0
        if self.task_module is not None:
            weights = self.task_module.weights(sparse, self.box_contexts(embedding, boxes))
            w_rms, sparse = float((weights - 1).square().mean().sqrt()), sparse * weights
        if self.entity_module is not None:
            rows = [i for i, b in enumerate(boxes) for _ in range(len(b))]
            xis = self.entity_module(sparse, embedding.select(rows).image_embed.to(sparse), self.output_tokens)
            xi = float(torch.stack([x.abs().mean() for x in xis]).mean())
        return {"w_rms_from_1": w_rms, "xi_abs_mean": xi}

    def describe(self) -> str:
        capl = sum(p.numel() for n, p in self.named_parameters() if n in self.capl_names)
        return f"cpc ({self.variant}, CaPL {capl:,} parameters) " + super().describe()

