"""Adapter over Hugging Face `transformers` (`SamModel` and `Sam2Model` with their processors)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from samkit.errors import UnsupportedModelError
from samkit.models.base import ImageEmbedding, SamAdapter, Size


class TransformersAdapter(SamAdapter):
    """`transformers.SamModel` or `Sam2Model` behind the samkit seam.

    transformers batches prompts as (images, prompt sets per image, tokens, 256); samkit's
    seam is (prompt sets, tokens, 256) with one image per set, so each set is one "image"
    row with a single prompt set. Pre- and post-processing are the processor's own.
    """

    part_paths = {"image_encoder": "vision_encoder", "prompt_encoder": "prompt_encoder",
                  "mask_decoder": "mask_decoder"}

    def decoder_cross_attentions(self):
        # transformers' attention modules take (query, key, value, attention_similarity) and are not
        # segment_anything's; a method that swaps them would silently compute something else.
        raise UnsupportedModelError(f"{self.name} (TransformersAdapter): its decoder attention is transformers' "
                                    "own; load the official checkpoint with segment_anything or sam2 instead")

    def __init__(self, model, processor, name: str, checkpoint_sha256: str | None, device: torch.device):
        self.model = model.to(device).eval()
        self.module = self.model
        self.processor = processor
        self.name = name
        self.checkpoint_sha256 = checkpoint_sha256
        self.device = device
        self.is_sam2 = type(model).__name__.startswith("Sam2")
        self.image_size = int(processor.image_processor.size.get("longest_edge")
                              or processor.image_processor.size.get("height"))

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Size]]:
        inputs = self.processor.image_processor(images, return_tensors="pt")
        if "reshaped_input_sizes" in inputs:
            input_sizes = [tuple(int(v) for v in size) for size in inputs["reshaped_input_sizes"].tolist()]
        else:  # SAM2 resizes to a square
            input_sizes = [(self.image_size, self.image_size)] * len(images)
        return inputs["pixel_values"].to(self.device), input_sizes

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        embeddings = self.model.get_image_embeddings(pixels)
        if self.is_sam2:
            return embeddings[-1], embeddings[:-1]
        return embeddings, ()

    def transform_coords(self, coords: torch.Tensor, original_size: Size) -> torch.Tensor:
        shape = coords.shape
        flat = coords.reshape(-1, 2)
        if self.is_sam2:
            scaled = self.processor._normalize_coordinates(self.image_size, flat.cpu(), tuple(original_size))
            return torch.as_tensor(scaled, dtype=torch.float32, device=self.device).reshape(shape)
        # SamProcessor scales in float64 numpy and the prompt encoder keeps float64 until its
        # positional encoding: doing the same keeps masks identical to the last pixel.
        scaled = self.processor._normalize_coordinates(
            self.image_size, flat.cpu().numpy().astype(np.float64), tuple(original_size))
        return torch.as_tensor(scaled, dtype=torch.float64, device=self.device).reshape(shape)

    def encode_prompts(self, points, labels, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.model.prompt_encoder(
            input_points=points[:, None] if points is not None else None,
            input_labels=labels[:, None] if labels is not None else None,
            input_boxes=boxes[:, None] if boxes is not None else None,
            input_masks=masks,
        )
        if sparse is None:  # a mask prompt alone: SAM's "not a point" padding token
            batch = dense.shape[0]
            pad = torch.zeros(batch, 1, 1, 2, device=self.device)
            sparse, _ = self.model.prompt_encoder(pad, -torch.ones(batch, 1, 1, dtype=torch.int, device=self.device),
                                                  None, None)
        return sparse[:, 0], dense

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        encoder = self.model.prompt_encoder
        height, width = encoder.image_embedding_size
        return encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)

    def run_decoder(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                    multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        batch = sparse.shape[0]
        image_embed = embedding.image_embed.expand(batch, -1, -1, -1)
        image_pe = self.model.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
        arguments = dict(
            image_embeddings=image_embed, image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse[:, None], dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        if self.is_sam2:
            high_res = [feat.expand(batch, -1, -1, -1) for feat in embedding.high_res_feats]
            masks, iou, _, _ = self.model.mask_decoder(high_resolution_features=high_res, **arguments)
        else:
            masks, iou = self.model.mask_decoder(**arguments)
        return masks[:, 0], iou[:, 0]

    def postprocess_masks(self, low_res: torch.Tensor, input_size: Size, original_size: Size) -> torch.Tensor:
        if self.is_sam2:
            return self.processor.post_process_masks([low_res], [list(original_size)], binarize=False)[0]
        return self.processor.post_process_masks([low_res], [list(original_size)], [list(input_size)],
                                                 binarize=False)[0]
