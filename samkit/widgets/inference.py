"""What the probe computes for one prompt state: candidates, the single mask, jitter spread.

Only the mask decoder runs here: the Predictor holds the image embedding, so no function in
this module ever runs the image encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from samkit.errors import bad_argument
from samkit.lru import LruCache
from samkit.predictor import Predictor
from samkit.widgets.state import Prompts, Snapshot


@dataclass
class ProbeResult:
    """SAM's answer to one prompt state, at the original image size."""

    masks: np.ndarray  # (3, H, W) bool: the multimask candidates
    scores: np.ndarray  # (3,) predicted IoU of the candidates
    single_mask: np.ndarray  # (H, W) bool: the multimask=False output
    single_score: float
    multimask: bool  # which output is "the result": SAM's pick of the 3, or the single mask
    low_res: np.ndarray  # (1, h, w) low-res logits of the result (what feed_mask passes on)

    @property
    def pick(self) -> int:
        """SAM's own pick among the candidates: the highest predicted IoU."""
        return int(np.argmax(self.scores))

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.pick] if self.multimask else self.single_mask

    @property
    def score(self) -> float:
        return float(self.scores[self.pick]) if self.multimask else self.single_score

    @property
    def all_masks(self) -> np.ndarray:
        """(4, H, W): the three candidates, then the single mask (the order the browser draws)."""
        return np.concatenate([self.masks, self.single_mask[None]])


def prompt_arrays(prompts: Prompts) -> dict:
    """`predictor.predict` keyword arguments for a prompt set."""
    arguments = {}
    if prompts.points:
        arguments["points"] = np.asarray(prompts.points, dtype=np.float32)
        arguments["labels"] = np.asarray(prompts.labels, dtype=np.int64)
    if prompts.box is not None:
        arguments["box"] = np.asarray(prompts.box, dtype=np.float32)
    return arguments


class ChainMemo(LruCache):
    """Low-res logits of earlier predictions, keyed by the prompt history that produced them.

    With feed_mask on, the current masks depend on every earlier prompt set of the chain;
    the memo makes a new click cost one step, not a replay of the whole history.
    """

    def __init__(self, items: int = 256):
        super().__init__(items)


def _result_low_res(scores: np.ndarray, low_res: np.ndarray) -> np.ndarray:
    return low_res[int(np.argmax(scores))][None]  # the pick's logits (the only one without multimask)


def chain_mask_input(predictor: Predictor, snapshot: Snapshot, memo: ChainMemo) -> np.ndarray | None:
    """The `mask_input` for the current prompts: the result of the chain's last link."""
    low_res = None
    for i, link in enumerate(snapshot.chain):
        key = (snapshot.chain[:i + 1], snapshot.multimask)
        cached = memo.get(key)
        if cached is None:
            _, scores, logits = predictor.predict(**prompt_arrays(link), mask_input=low_res,
                                                  multimask=snapshot.multimask)
            cached = _result_low_res(scores, logits)
            memo.put(key, cached)
        low_res = cached
    return low_res


def _decode_both(predictor: Predictor, arguments: dict, mask_input: np.ndarray | None) -> tuple:
    """(masks, scores, low_res) of the 3 candidates and of the single mask, from `model.decode_both`
    (one decoder run where the model allows it)."""
    model = predictor.model
    embedding = predictor._require_image()
    outputs = []
    with torch.inference_mode():
        sparse, dense = model.prompt_tokens(arguments.get("points"), arguments.get("labels"), arguments.get("box"),
                                            mask_input, original_size=embedding.original_sizes[0])
        for low_res, scores in model.decode_both(embedding, sparse, dense):
            logits = model.postprocess_masks(low_res, embedding.input_sizes[0], embedding.original_sizes[0])
            outputs.append(((logits[0] > model.mask_threshold).cpu().numpy(), scores[0].float().cpu().numpy(),
                            model.low_res_output(low_res)[0].float().cpu().numpy()))
    return tuple(outputs)


def predict_snapshot(predictor: Predictor, snapshot: Snapshot, memo: ChainMemo) -> ProbeResult | None:
    """Both outputs (3 candidates and the single mask) for a prompt state; None without prompts."""
    if snapshot.prompts.empty:
        return None
    mask_input = chain_mask_input(predictor, snapshot, memo) if snapshot.feed_mask else None
    if mask_input is not None:
        mask_input = mask_input[None]  # (1, 1, h, w), as Predictor.predict makes it
    (masks, scores, low_res), (single, single_score, single_low_res) = _decode_both(
        predictor, prompt_arrays(snapshot.prompts), mask_input)
    result = ProbeResult(masks, scores, single[0], float(single_score[0]), snapshot.multimask,
                         _result_low_res(scores, low_res) if snapshot.multimask else single_low_res)
    if snapshot.feed_mask:
        memo.put((snapshot.chain + (snapshot.prompts,), snapshot.multimask), result.low_res)
    return result


def jitter_masks(predictor: Predictor, prompts: Prompts, sigma: float, samples: int,
                 rng: np.random.Generator, multimask: bool = True,
                 mask_input: np.ndarray | None = None) -> np.ndarray:
    """(samples, H, W) result masks for `samples` perturbed copies of `prompts`.

    Every click and box corner moves by Gaussian noise of std `sigma` image pixels (clipped
    to the image). All copies go through the decoder in one batched call; only each copy's
    result (SAM's pick, or the single mask) is upsampled to full size.
    """
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise bad_argument("samples", "a positive int", samples)
    if not np.isfinite(sigma) or sigma < 0:
        raise bad_argument("sigma", "a jitter >= 0 in image pixels", sigma)
    if prompts.empty:
        raise bad_argument("prompts", "at least one click or a box to jitter", prompts)
    model, embedding = predictor.model, predictor._require_image()
    height, width = embedding.original_sizes[0]
    limits = np.array([width, height], dtype=np.float64)
    points = labels = boxes = None
    if prompts.points:
        base = np.asarray(prompts.points, dtype=np.float64)
        points = np.clip(base + rng.normal(0.0, sigma, size=(samples, *base.shape)), 0.0, limits)
        labels = np.tile(np.asarray(prompts.labels, dtype=np.int64), (samples, 1))
    if prompts.box is not None:
        corners = np.asarray(prompts.box, dtype=np.float64).reshape(2, 2)
        moved = np.clip(corners + rng.normal(0.0, sigma, size=(samples, 2, 2)), 0.0, limits)
        boxes = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)  # keep x0 <= x1
    masks_in = None
    if mask_input is not None:
        masks_in = np.repeat(np.asarray(mask_input, dtype=np.float32)[None], samples, axis=0)
    with torch.inference_mode():
        sparse, dense = model.prompt_tokens(points, labels, boxes, masks_in, original_size=(height, width))
        low_res, scores = model.decode(embedding, sparse, dense, multimask=multimask)
        chosen = scores.argmax(dim=1)
        picked = low_res[torch.arange(samples), chosen][:, None]
        logits = model.postprocess_masks(picked, embedding.input_sizes[0], (height, width))
    return (logits[:, 0] > model.mask_threshold).cpu().numpy()


def iou_to(masks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """IoU of each of `masks` (S, H, W) with one `reference` (H, W); 1.0 for empty vs empty."""
    flat, ref = masks.reshape(len(masks), -1), reference.reshape(-1)
    inter = (flat & ref).sum(axis=1)
    union = (flat | ref).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def pack_masks(masks: np.ndarray) -> bytes:
    """(K, H, W) bool -> K bit-packed masks (8 pixels a byte, row-major), each padded to whole bytes.

    A 400 x 600 mask is 30 kB this way, sent as one binary buffer: no JSON, no base64.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise bad_argument("masks", "a (K, H, W) stack of masks", masks)
    return np.packbits(masks.reshape(len(masks), -1), axis=1).tobytes()


def unpack_masks(data: bytes, count: int, size: tuple[int, int]) -> np.ndarray:
    """The inverse of `pack_masks` (what the browser does, in numpy, for tests)."""
    height, width = size
    stride = -(-height * width // 8)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8).reshape(count, stride), axis=1)
    return bits[:, :height * width].reshape(count, height, width).astype(bool)
