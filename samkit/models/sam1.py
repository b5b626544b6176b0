"""Adapter over the official `segment_anything` package (SAM ViT-B/L/H, and TinySAM, which is the same class)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samkit.models.base import ImageEmbedding, SamAdapter, Size
from samkit.models.shared_image_decoder import decode_shared_image, use_shared_image


class SegmentAnythingAdapter(SamAdapter):
    """`segment_anything.modeling.Sam` behind the samkit seam.

    Pre- and post-processing are the package's own (`ResizeLongestSide`, `Sam.preprocess`,
    `Sam.postprocess_masks`), so masks match `SamPredictor` exactly.

    `shared_image_decoding` (on by default) decodes many prompt sets on one image through
    `shared_image_decoder`: the same masks up to float rounding, 2-5x faster (`make bench`). Its
    contract: it reads the decoder's projection weights directly, so it is only exact for the plain
    segment_anything modules. `shared_image_decoder.supports` refuses any other module, and a method
    that wraps or swaps decoder layers (LoRA on the decoder, CPC-SAM's calibrated attention) also
    switches it off itself rather than rely on that check.
    """

    def __init__(self, sam: Sam, name: str, checkpoint_sha256: str | None, device: torch.device,
                 shared_image_decoding: bool = True):
        self.shared_image_decoding = shared_image_decoding
        self.sam = sam.to(device).eval()
        self.module = self.sam
        self.name = name
        self.checkpoint_sha256 = checkpoint_sha256
        self.device = device
        self.image_size = sam.image_encoder.img_size
        self.mask_threshold = sam.mask_threshold
        self.resize = ResizeLongestSide(self.image_size)

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Size]]:
        batch, input_sizes = [], []
        for image in images:
            resized = torch.as_tensor(self.resize.apply_image(image), device=self.device)
            resized = resized.permute(2, 0, 1).contiguous()[None]
            input_sizes.append(tuple(resized.shape[-2:]))
            batch.append(self.sam.preprocess(resized))  # normalise, pad to a square
        return torch.cat(batch), input_sizes

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        return self.sam.image_encoder(pixels), ()

    def transform_coords(self, coords: torch.Tensor, original_size: Size) -> torch.Tensor:
        # In float64 numpy, as SamPredictor does, so coordinates match it to the last bit.
        scaled = self.resize.apply_coords(coords.detach().cpu().numpy().astype(np.float64), original_size)
        return torch.as_tensor(scaled, dtype=torch.float32, device=self.device)

    def encode_prompts(self, points, labels, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sam.prompt_encoder(
            points=(points, labels) if points is not None else None, boxes=boxes, masks=masks)

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        encoder = self.sam.prompt_encoder
        height, width = encoder.image_embedding_size
        return encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)

    def decode_both(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor | None = None):
        # SAM's decoder always computes all 4 mask tokens; `multimask` only picks which to return:
        # token 0 is the single-mask output, tokens 1-3 the candidates (as in MaskDecoder.forward).
        low_res, iou = self.decode(embedding, sparse, dense, multimask=None)
        return (low_res[:, 1:], iou[:, 1:]), (low_res[:, :1], iou[:, :1])

    def run_decoder(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                    multimask: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`multimask`: True the 3 candidates, False the single mask, None all 4 (single first)."""
        # Several prompt sets on one image with one dense embedding (clicks, boxes, learned tokens; no
        # mask input): the image side is shared, see shared_image_decoder. One or two prompt sets
        # have too little to share and keep the general path, which is then the cheaper one.
        decoder = self.sam.mask_decoder
        if self.shared_image_decoding and use_shared_image(decoder, embedding.image_embed, sparse, dense):
            return decode_shared_image(decoder, embedding.image_embed, self.sam.prompt_encoder.get_dense_pe(),
                                       dense, sparse, multimask)
        return self.run_decoder_general(embedding, sparse, dense, multimask)

    def run_decoder_general(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                            multimask: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder for any inputs (one image per prompt set, per-prompt dense embeddings)."""
        # MaskDecoder.predict_masks, with one change: the official code repeats a single image
        # embedding for every prompt set, so B images with B prompt sets (a training batch)
        # cannot go through it in one call. Here the image batch is expanded (a view) or
        # aligned; every other operation is the official one, in the same order.
        decoder = self.sam.mask_decoder
        batch = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
        src = embedding.image_embed.expand(batch, -1, -1, -1) + dense
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        pos_src = image_pe.expand(batch, -1, -1, -1)
        channels, height, width = src.shape[1:]
        hs, src = decoder.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + decoder.num_mask_tokens), :]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(batch, channels, height, width))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                                for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        _, up_channels, up_height, up_width = upscaled.shape
        masks = (hyper_in @ upscaled.view(batch, up_channels, up_height * up_width))
        masks = masks.view(batch, -1, up_height, up_width)
        iou_pred = decoder.iou_prediction_head(iou_token_out)
        chosen = slice(None) if multimask is None else slice(1, None) if multimask else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def postprocess_masks(self, low_res: torch.Tensor, input_size: Size, original_size: Size) -> torch.Tensor:
        return self.sam.postprocess_masks(low_res, tuple(input_size), tuple(original_size))
