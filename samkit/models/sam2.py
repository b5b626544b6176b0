"""Adapter over the official `sam2` package (SAM 2.1 Hiera, image mode)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from samkit.models.base import ImageEmbedding, SamAdapter, Size
from samkit.models.shared_image_decoder import decode_shared_image, use_shared_image

# Our names -> the configs that ship inside the sam2 package.
SAM2_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def build_sam2_model(name: str) -> torch.nn.Module:
    """The SAM 2.1 architecture `name`, random weights, with the post-processing options of
    `sam2.build_sam.build_sam2` (dynamic multimask fallback) and no checkpoint read."""
    from sam2.build_sam import build_sam2

    return build_sam2(SAM2_CONFIGS[name], ckpt_path=None, device="cpu", mode="eval")


class Sam2Adapter(SamAdapter):
    """`sam2.modeling.sam2_base.SAM2Base` in image mode behind the samkit seam.

    Follows `SAM2ImagePredictor` step by step (same transforms, boxes as two labelled corner
    points before the clicks), so masks match it exactly.

    `shared_image_decoding`, as in `SegmentAnythingAdapter`: many prompt sets on one image go through
    `shared_image_decoder` where it supports the decoder (no object-score token, no dynamic multimask:
    TinySAM v2; the official SAM 2.1 builds use both, so they keep the general path).
    """

    part_paths = {"image_encoder": "image_encoder", "prompt_encoder": "sam_prompt_encoder",
                  "mask_decoder": "sam_mask_decoder"}

    def __init__(self, model: torch.nn.Module, name: str, checkpoint_sha256: str | None, device: torch.device):
        from sam2.utils.transforms import SAM2Transforms

        self.model = model.to(device).eval()
        self.module = self.model
        self.shared_image_decoding = True
        self.name = name
        self.checkpoint_sha256 = checkpoint_sha256
        self.device = device
        self.image_size = model.image_size
        self.transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=0.0)
        side = model.image_size
        self.feature_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Size]]:
        pixels = self.transforms.forward_batch(images).to(self.device)
        return pixels, [(self.image_size, self.image_size)] * len(images)  # SAM2 resizes to a square

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        backbone_out = self.model.forward_image(pixels)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        batch = pixels.shape[0]
        feats = [feat.permute(1, 2, 0).reshape(batch, -1, *size)
                 for feat, size in zip(vision_feats[::-1], self.feature_sizes[::-1])][::-1]
        return feats[-1], feats[:-1]

    def transform_coords(self, coords: torch.Tensor, original_size: Size) -> torch.Tensor:
        return self.transforms.transform_coords(coords, normalize=True, orig_hw=tuple(original_size))

    def encode_prompts(self, points, labels, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
        concat = (points, labels) if points is not None else None
        if boxes is not None:  # a box is two points labelled 2 and 3, placed before the clicks
            box_points = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device).repeat(box_points.shape[0], 1)
            concat = (box_points, box_labels) if concat is None else (
                torch.cat([box_points, concat[0]], dim=1), torch.cat([box_labels, concat[1]], dim=1))
        return self.model.sam_prompt_encoder(points=concat, boxes=None, masks=masks)

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        encoder = self.model.sam_prompt_encoder
        height, width = encoder.image_embedding_size
        return encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)

    def single_run_for_both(self) -> bool:
        """Whether one decoder run gives both outputs: its 4 mask tokens are the single mask and the
        3 candidates, unless the single mask is chosen at run time (dynamic multimask, SAM 2.1)."""
        return not self.model.sam_mask_decoder.dynamic_multimask_via_stability

    def decode_both(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor | None = None):
        if not self.single_run_for_both():
            return super().decode_both(embedding, sparse, dense)
        low_res, iou = self.decode(embedding, sparse, dense, multimask=None)
        return (low_res[:, 1:], iou[:, 1:]), (low_res[:, :1], iou[:, :1])

    def run_decoder(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                    multimask: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`multimask`: True the 3 candidates, False the single mask, None all 4 (single first; only
        where `single_run_for_both`)."""
        decoder = self.model.sam_mask_decoder
        if self.shared_image_decoding and use_shared_image(decoder, embedding.image_embed, sparse, dense):
            skips = tuple(embedding.high_res_feats) if decoder.use_high_res_features else None
            return decode_shared_image(decoder, embedding.image_embed, self.model.sam_prompt_encoder.get_dense_pe(),
                                       dense, sparse, multimask, high_res_features=skips)
        return self.run_decoder_general(embedding, sparse, dense, multimask)

    def run_decoder_general(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                            multimask: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """sam2's own MaskDecoder, for any inputs: `forward`, or for all 4 masks `predict_masks`,
        whose output `forward` only slices."""
        decoder = self.model.sam_mask_decoder
        inputs = dict(image_embeddings=embedding.image_embed, image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                      repeat_image=len(embedding) == 1 and sparse.shape[0] > 1,
                      high_res_features=list(embedding.high_res_feats))
        if multimask is None:
            if not self.single_run_for_both():
                raise ValueError("multimask: expected True or False for a decoder with dynamic multimask, got None")
            low_res, iou, _, _ = decoder.predict_masks(**inputs)
            return low_res, iou
        low_res, iou, _, _ = decoder(multimask_output=multimask, **inputs)
        return low_res, iou

    def postprocess_masks(self, low_res: torch.Tensor, input_size: Size, original_size: Size) -> torch.Tensor:
        return self.transforms.postprocess_masks(low_res, tuple(original_size))

    def low_res_output(self, low_res: torch.Tensor) -> torch.Tensor:
        return torch.clamp(low_res, -32.0, 32.0)
