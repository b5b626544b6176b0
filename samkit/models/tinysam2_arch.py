"""TinySAM v2's architecture: the real `sam2` SAM2Base at a small size, image mode.

SAM 2's design, not SAM 1's: a hierarchical trunk (stride 4, 8, 16, 32), an FPN neck to 256-d,
and the mask decoder's high-resolution skip features (`use_high_res_features_in_sam`): the
stride-4 and stride-8 maps go straight into the decoder's mask upscaling, so a 30 px entity is
seen by 7 x 7 stride-4 features instead of the two or three 16 px tokens of TinySAM v1. The
prompt encoder and mask decoder are SAM 2's own at full width (256-d tokens, two-way transformer,
3 + 1 masks and the IoU head). The video memory is not used in image mode; SAM2Base still needs
its modules, so they are built with no layers.

Two trunks, both from the sam2 package's classes:
- "hiera": SAM 2's Hiera at 48-d (Hiera-T is 96-d), 8 blocks;
- "conv": a ConvNeXt of sam2's own `CXBlock`s (depthwise 7 x 7 + MLP), since a ConvNet learns
  faster from little data than an attention trunk trained from scratch.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 256
PROMPT_DIM = 256  # as in SAM 2
MEMORY_DIM = 64
TRUNKS = ("hiera", "conv")
STAGE_DEPTHS = (1, 2, 4, 1)
TRUNK_DIM = 48  # stage i has TRUNK_DIM * 2**i channels


class ConvTrunk(nn.Module):
    """A small ConvNeXt from sam2's CXBlock; returns stride 4, 8, 16 and 32 maps (finest first),
    with `channel_list` coarsest first, as sam2's Hiera does, so sam2's FpnNeck takes it as is."""

    def __init__(self, dim: int = TRUNK_DIM, depths: tuple[int, ...] = STAGE_DEPTHS):
        super().__init__()
        from sam2.modeling.memory_encoder import CXBlock
        from sam2.modeling.sam2_utils import LayerNorm2d

        widths = [dim * 2**i for i in range(len(depths))]
        # Two stride-2 3 x 3 convolutions rather than one 4 x 4 patch: the stride-4 map is what the
        # decoder's skip connection sees, so it should hold edges, not patches.
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0] // 2, 3, 2, 1), LayerNorm2d(widths[0] // 2), nn.GELU(),
                                  nn.Conv2d(widths[0] // 2, widths[0], 3, 2, 1), LayerNorm2d(widths[0]))
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm2d(widths[i - 1]), nn.Conv2d(widths[i - 1], widths[i], 2, 2))
            for i in range(1, len(depths)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[CXBlock(width, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True)
                            for _ in range(depth)])
            for width, depth in zip(widths, depths))
        self.channel_list = widths[::-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i:
                x = self.downsample[i - 1](x)
            x = stage(x)
            features.append(x)
        return features


def hiera_trunk(dim: int = TRUNK_DIM, depths: tuple[int, ...] = STAGE_DEPTHS) -> nn.Module:
    """SAM 2's Hiera at `dim`: windowed attention at stride 4 and 8, global from stride 16 on."""
    from sam2.modeling.backbones.hieradet import Hiera

    # Windows per stage: 8 x 8 at 64 x 64 and 32 x 32, the whole map at 16 x 16 and 8 x 8, so the
    # last two stages attend globally without naming global blocks.
    return Hiera(embed_dim=dim, num_heads=1, stages=depths, global_att_blocks=(),
                 window_spec=(8, 8, 16, 8), window_pos_embed_bkg_spatial_size=(8, 8))


def build_tinysam2(trunk: str = "hiera") -> nn.Module:
    """TinySAM v2 (SAM2Base) with random weights; `trunk` is "hiera" or "conv"."""
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.modeling.sam.transformer import RoPEAttention

    if trunk not in TRUNKS:
        raise ValueError(f"trunk: expected one of {', '.join(TRUNKS)}, got {trunk!r}")
    body = hiera_trunk() if trunk == "hiera" else ConvTrunk()
    neck = FpnNeck(position_encoding=PositionEmbeddingSine(PROMPT_DIM, normalize=True, scale=None, temperature=10000),
                   d_model=PROMPT_DIM, backbone_channel_list=list(body.channel_list),
                   fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    image_encoder = ImageEncoder(trunk=body, neck=neck, scalp=1)  # drop the stride-32 map, as SAM 2 does

    # The video memory, unused in image mode: no layers, so almost no weights.
    grid = IMAGE_SIZE // 16
    layer = MemoryAttentionLayer(
        activation="relu", d_model=PROMPT_DIM, dim_feedforward=PROMPT_DIM, dropout=0.0,
        pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(embedding_dim=PROMPT_DIM, num_heads=1, downsample_rate=1,
                                     rope_theta=10000.0, feat_sizes=(grid, grid)),
        cross_attention=RoPEAttention(embedding_dim=PROMPT_DIM, num_heads=1, downsample_rate=1,
                                      rope_theta=10000.0, feat_sizes=(grid, grid), rope_k_repeat=True,
                                      kv_in_dim=MEMORY_DIM))
    memory_attention = MemoryAttention(d_model=PROMPT_DIM, pos_enc_at_input=True, layer=layer, num_layers=0)
    memory_encoder = MemoryEncoder(
        out_dim=MEMORY_DIM,
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=PROMPT_DIM, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=0),
        position_encoding=PositionEmbeddingSine(num_pos_feats=MEMORY_DIM, normalize=True, scale=None,
                                                temperature=10000))
    model = SAM2Base(
        image_encoder=image_encoder, memory_attention=memory_attention, memory_encoder=memory_encoder,
        num_maskmem=1, image_size=IMAGE_SIZE,
        use_high_res_features_in_sam=True,  # the stride-4 and stride-8 skip features
        multimask_output_in_sam=True, iou_prediction_use_sigmoid=True,
        directly_add_no_mem_embed=True, pred_obj_scores=False,
        use_mask_input_as_output_without_sam=True,
    )
    # The skip projections start at zero, so the decoder starts as SAM 1's and learns to follow the
    # prompt before the skips grow in. With sam2's default initialisation the skips swamp the
    # prompt-dependent stream after the first LayerNorm2d, and from scratch the decoder settles on a
    # prompt-free "every object" mask (data/README.md, session 7 pilots).
    for projection in (model.sam_mask_decoder.conv_s0, model.sam_mask_decoder.conv_s1):
        nn.init.zeros_(projection.weight)
        nn.init.zeros_(projection.bias)
    return model.eval()
