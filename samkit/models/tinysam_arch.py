"""TinySAM's architecture: the real `segment_anything` Sam, with a small ViT image encoder.

Only the image encoder is smaller than SAM ViT-B (256 px input, 192-d, 6 blocks). The prompt
encoder and mask decoder are SAM's own, so prompt tokens are 256-d and everything a method
learns here speaks the same language as on the official checkpoints.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

IMAGE_SIZE = 256
PATCH_SIZE = 16
ENCODER_DIM = 192
ENCODER_DEPTH = 6
ENCODER_HEADS = 6
PROMPT_DIM = 256  # as in SAM


def build_tinysam() -> Sam:
    """TinySAM with random weights (about 7.5M parameters)."""
    grid = IMAGE_SIZE // PATCH_SIZE
    image_encoder = ImageEncoderViT(
        img_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        embed_dim=ENCODER_DIM,
        depth=ENCODER_DEPTH,
        num_heads=ENCODER_HEADS,
        mlp_ratio=4,
        out_chans=PROMPT_DIM,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=0,  # 16 x 16 tokens: global attention everywhere is cheap
        global_attn_indexes=(),
    )
    prompt_encoder = PromptEncoder(
        embed_dim=PROMPT_DIM,
        image_embedding_size=(grid, grid),
        input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
