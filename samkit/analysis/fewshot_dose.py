"""Prompt noise as a dose: VRP-SAM-style encoders trained with fixed-size noise on their tokens.

ProSAM's argument (Proposition 1) is that training on noisy prompts adds a penalty on the
curvature of the loss, so the learned prompt sits where small changes do not flip the mask.
`train_encoder` trains `ProSAM(variant="vrp")` with Gaussian noise of std `noise` x the token
RMS (`noisy_tokens`; noise 0 is VRP-SAM itself), and `score_episodes` tests the noise-free
tokens per episode. Runs at different doses share the seed's initial weights, its batches and
its noise directions, so their differences are paired. SAM's image embeddings come from the
method's `CachedEncoder`, which keeps them in memory: across runs the image encoder runs once
per image.

`decoy_episodes` builds the ambiguous condition: every target image gets a decoy with the
class's texture and another class's shape, which the pseudo-mask (feature similarity) lights
up as much as the object itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from samkit.datasets.shapescenes import ShapeScenes, VOCABULARY
from samkit.errors import bad_argument
from samkit.methods.prosam import ProSAM


def decoy_episodes(episodes: list[dict[str, Any]], scenes: ShapeScenes, seed: int = 0) -> list[dict[str, Any]]:
    """The same episodes with a same-textured decoy painted into each target (`paint_decoy`).

    The decoy of a (target image, class) pair depends only on (seed, image, class), so episodes
    that share a target share its decoy image (and its cached embedding). The true mask loses
    what the decoy hides."""
    out, painted = [], {}
    for item in episodes:
        key = (item["target_index"], item["class_name"])
        if key not in painted:
            rng = np.random.default_rng([seed, key[0], VOCABULARY.index(key[1])])
            painted[key] = scenes.paint_decoy(scenes[key[0]], key[1], rng)
        image, decoy = painted[key]
        out.append({**item, "target_image": image, "target_mask": item["target_mask"] & ~decoy, "decoy_mask": decoy})
    return out


def train_encoder(method: ProSAM, seed: int, steps: int, noise: float = 0.0, batch: int = 8, lr: float = 1e-3,
                  weight_decay: float = 1e-6, clip_grad_norm: float = 1.0) -> np.ndarray:
    """Train a fresh encoder (from `seed`) for `steps` AdamW steps on the method's training episodes,
    cosine learning rate, with token noise `noise` (VRP-SAM only; ProSAM's variants learn their own
    scale); returns the training loss per step.

    The episodes of step t and the noise directions depend on `seed` only, not on `noise`."""
    for name, value in (("steps", steps), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise bad_argument(name, "an int >= 1", value)
    if noise and method.variant != "vrp":
        raise bad_argument("noise", "0 for ProSAM's variants (they learn their scale); a dose needs variant vrp",
                           noise)
    method.noise = float(noise)
    method.reset_encoder(seed)
    parameters = [p for p in method.prompt_encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    rng = np.random.default_rng([seed, 1])
    losses = np.empty(steps)
    method.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # the noise draws: the same sequence at every dose
        for step in range(steps):
            items = [method.train_sample(i, rng) for i in range(batch)]
            loss, _ = method(items)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
            optimizer.step()
            schedule.step()
            losses[step] = float(loss.detach())
    method.eval()
    return losses


def score_episodes(method: ProSAM, episodes: list[dict[str, Any]], batch: int = 16, samples: int = 0) -> dict[str, Any]:
    """`ProSAM.score` on a list of episode items, `batch` at a time."""
    return method.score((episodes[start:start + batch] for start in range(0, len(episodes), batch)), samples)


__all__ = ["decoy_episodes", "score_episodes", "train_encoder"]
