"""`Predictor`: SAM's familiar `set_image` / `predict` interface over any samkit model."""

from __future__ import annotations

import numpy as np
import torch

from samkit.cache import CachedEncoder, EmbeddingCache
from samkit.errors import bad_argument
from samkit.images import ImageLike
from samkit.models.base import ImageEmbedding, SamAdapter


class Predictor:
    """Shaped like `segment_anything.SamPredictor`, for every adapter.

    The image embedding is cached by image content: setting an image seen before (in this
    process, or on disk for models with known weights) runs no image encoder.
    `encoder_calls` counts how often the encoder did run.
    """

    def __init__(self, model: SamAdapter | str = "tinysam", disk_cache: bool | EmbeddingCache = True,
                 memory_items: int = 16):
        if isinstance(model, str):
            from samkit.models.registry import load_model

            model = load_model(model)
        if not isinstance(model, SamAdapter):
            raise bad_argument("model", "a model from samkit.load_model(...) or a model name", model)
        self.model = model
        self.encoder = CachedEncoder(model, disk_cache, memory_items)
        self.embedding: ImageEmbedding | None = None
        self.image_sha256: str | None = None

    @property
    def disk_cache(self) -> EmbeddingCache | None:
        return self.encoder.disk_cache

    @property
    def encoder_calls(self) -> int:
        """How often the image encoder ran (a cached image does not count)."""
        return self.encoder.encoder_calls

    # ---- image -------------------------------------------------------------------------
    def set_image(self, image: ImageLike) -> Predictor:
        """Embed `image` (H x W x 3 uint8, grayscale, RGBA, float in [0, 1] or PIL)."""
        self.embedding, (self.image_sha256,) = self.encoder.embed(image)
        return self

    @property
    def original_size(self) -> tuple[int, int]:
        return self._require_image().original_sizes[0]

    def _require_image(self) -> ImageEmbedding:
        if self.embedding is None:
            raise RuntimeError("no image set: call predictor.set_image(image) before predict(...)")
        return self.embedding

    # ---- prompts -----------------------------------------------------------------------
    def predict(
        self,
        points=None,
        labels=None,
        box=None,
        mask_input=None,
        multimask: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts, in original image pixels.

        points: (N, 2) as (x, y), labels: (N,) with 1 positive / 0 negative; box: (4,) XYXY;
        mask_input: (1, 256, 256) low-res logits from a previous call. Batched prompts work
        too (points (B, N, 2), box (B, 4)) and are decoded in one call.
        Returns masks (C, H, W) bool (or (B, C, H, W)), scores (C,), low-res logits (C, 256, 256).
        """
        embedding = self._require_image()
        if points is None and box is None and mask_input is None:
            raise bad_argument("points/box/mask_input", "at least one prompt", None)
        batched = (points is not None and np.ndim(points) == 3) or (box is not None and np.ndim(box) == 2)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32) if not torch.is_tensor(mask_input) else mask_input
            if mask_input.ndim == 3:
                mask_input = mask_input[None]
        with torch.inference_mode():
            sparse, dense = self.model.prompt_tokens(points, labels, box, mask_input,
                                                     original_size=self.original_size)
            low_res, scores = self.model.decode(embedding, sparse, dense, multimask=multimask)
            logits = self.model.postprocess_masks(low_res, embedding.input_sizes[0], embedding.original_sizes[0])
            low_res = self.model.low_res_output(low_res)
        masks = logits if return_logits else logits > self.model.mask_threshold
        outputs = (masks.cpu().numpy(), scores.float().cpu().numpy(), low_res.float().cpu().numpy())
        return outputs if batched else tuple(output[0] for output in outputs)
