"""SAM's mask decoder for many prompt sets on ONE image that share ONE dense embedding.

`MaskDecoder.predict_masks` repeats the image embedding for each of the B prompt sets and pushes B copies
of the (N = h*w, C = 256) image stream ("keys") through ten linear projections and a ConvTranspose2d:
about 85% of its work. When the image and the dense embedding are the same for every prompt set (clicks
or boxes on one image, no mask input), prompt set b's image stream is at every stage exactly

    X_b = diag(s_b) S + U_b Phi_b                                                        (N, C)

    S      (N, C)  shared by all prompt sets: image embedding + dense, times the LayerNorm gains so far
    s_b    (N,)    per-row scale: the product of the 1/sigma of the LayerNorms so far (1 at the start)
    U_b    (N, m)  per-row coefficients: image-to-token attention probabilities, 1/sigma, -mu/sigma, 1
    Phi_b  (m, C)  a few rows, each either a token value pushed through out_proj (per prompt set) or a
                   constant row (an out_proj bias, a LayerNorm gain or bias), times the gains since

(U_b is stored transposed, (m, N)), and m grows by heads * tokens + 3 per layer (8 * 7 + 3 for one
click: m = 118 after TinySAM's two layers), below C. Why it stays in this form:

* Image-to-token attention adds out_proj(softmax(q k^T) v) = sum_h A_h (v_h Wo_h^T) + bo: per head the
  (N, T) probabilities A_h times T rows v_h Wo_h^T. Appending A (all heads) to U and the rows v_h Wo_h^T
  to Phi (plus the bias as a constant row with coefficient 1) is exact.
* LayerNorm is per row: LN(x)_i = (x_i - mu_i) / sigma_i * g + beta. With x_i = s_i S_i + U_i Phi this is
  (s_i / sigma_i) (S_i g) + (U_i / sigma_i) (Phi g) + (-mu_i / sigma_i) g + 1 * beta: the same form, with
  S, Phi's shared factors and the constant rows multiplied by g (all prompt-independent), U and s scaled
  per row and two constant rows appended. mu_i and sigma_i come from the factors (`_layer_norm`).
* Any linear map W of the stream is then W-projected shared parts plus a small per-prompt product:
  X_b W^T = s_b * (S W^T) + U_b (Phi_b W^T), where S W^T is computed once per call, and Phi_b W^T is
  cheap because each row of Phi_b is a token value v_h (hd numbers) times a shared (hd, C) block of
  out_proj, so Phi_b W^T = v_h (Wo_h^T diag(gains) W^T) with the bracket shared (`_rows_times`).
* Attention of T tokens onto the stream never needs the projected stream either: scores are
  q_h . k_i = s_i (q_h . (S W_k^T)_i) + U_i (Phi W_k^T)_h q_h + q_h . (P W_k^T + b_k)_i, and
  sum_i p_i v_i = (p * s) (S W_v^T) + (p U) (Phi W_v^T) + b_v, because probabilities sum to 1.
* The first ConvTranspose2d (kernel 2, stride 2) is, per input pixel, a linear map C -> 4 * C/4, so
  the same projection rule gives its output without materialising X_b.

Only from the first upscaling LayerNorm2d on (LayerNorm2d, GELU, second ConvTranspose2d, GELU,
hypernetwork product) is the per-prompt tensor materialised. Token-side work (self-attention, MLPs,
hypernetwork MLPs, IoU head) runs batched through the decoder's own modules; the final token-to-image
attention runs for the IoU and mask tokens only, the only ones read afterwards. Per click on TinySAM
this is ~52M multiply-adds instead of ~130M (token MLPs 15M, second ConvTranspose2d 8M, first 8M).

Results equal the general path up to float rounding (the same distance from a float64 evaluation);
autograd flows to the sparse tokens, and to the image embedding, the dense embedding and the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from torch import Tensor, nn


@dataclass(frozen=True)
class _Family:
    """The module classes of one SAM implementation's mask decoder."""

    decoder: type
    transformer: type
    block: type
    attention: type
    norm2d: type


def _families() -> tuple[_Family, ...]:
    """segment_anything's decoder, and sam2's: the same two-way transformer, whose upscaling may add
    the image encoder's high-resolution features (`use_high_res_features`)."""
    from sam2.modeling.sam import mask_decoder as sam2_decoder
    from sam2.modeling.sam import transformer as sam2_transformer
    from sam2.modeling.sam2_utils import LayerNorm2d as Sam2LayerNorm2d

    return (_Family(MaskDecoder, TwoWayTransformer, TwoWayAttentionBlock, Attention, LayerNorm2d),
            _Family(sam2_decoder.MaskDecoder, sam2_transformer.TwoWayTransformer,
                    sam2_transformer.TwoWayAttentionBlock, sam2_transformer.Attention, Sam2LayerNorm2d))

# Prompt sets per pass through the transformer and through the upscaling (whose per-prompt 4h x 4w maps
# are the largest tensors), chosen so that a pass's tensors stay near the CPU's caches. Measured best on
# 2 CPU threads, 64 clicks, best of 3:
#   TinySAM (16 x 16 grid): 64/16 0.35 s for 200 clicks; 32/8 0.39 s; 128/16 0.38 s;
#   SAM ViT-B (64 x 64 grid): 16/1 1.32 s; 8/1 1.40 s; 8/2 1.36 s; 16/2 1.40 s; 4/1 1.72 s; 64/16 2.81 s.
# So: upscale as many prompt sets as fill 16 x 16 * 16 pixels, pass at least 16 through the transformer.
UPSCALE_PIXELS = 16 * 16 * 16
TRANSFORMER_PIXELS = 64 * 16 * 16
MIN_CHUNK = 16


def chunk_sizes(pixels: int) -> tuple[int, int]:
    """(prompt sets per transformer pass, prompt sets per upscaling pass) for an h*w = `pixels` grid."""
    return max(MIN_CHUNK, TRANSFORMER_PIXELS // pixels), max(1, UPSCALE_PIXELS // pixels)


# Sharing costs a fixed amount per call (the shared products, a thousand small operations per chunk)
# and saves an amount per prompt set proportional to the pixels h*w: measured on CPU, TinySAM (16 x 16)
# breaks even at about 3 prompt sets, SAM ViT-B (64 x 64) is ahead from 2.
MIN_PROMPTS_TIMES_PIXELS = 3 * 16 * 16


def use_shared_image(decoder: nn.Module, image_embed: Tensor, sparse: Tensor, dense: Tensor) -> bool:
    """Whether `decode_shared_image` applies to these inputs and is the faster path."""
    batch, pixels = sparse.shape[0], image_embed.shape[-2] * image_embed.shape[-1]
    return (batch > 1 and batch * pixels >= MIN_PROMPTS_TIMES_PIXELS and shares_image(image_embed, dense)
            and supports(decoder, sparse.shape[1]))


def supports(decoder: nn.Module, tokens: int) -> bool:
    """Whether `decode_shared_image` handles this decoder with `tokens` sparse tokens per prompt set.

    The factored stream grows by heads * (output + sparse tokens) columns per layer; past the
    attention's head dimension a dense stream is as cheap, so larger prompt sets use the general path.
    """
    family = next((f for f in _families() if type(decoder) is f.decoder), None)
    if family is None or type(decoder.transformer) is not family.transformer:
        return False
    # sam2 options the factored stream does not compute: an object-score token in front of the IoU
    # token, and the eval-time switch to a multimask output when the single mask is unstable.
    if getattr(decoder, "pred_obj_scores", False) or getattr(decoder, "dynamic_multimask_via_stability", False):
        return False
    transformer = decoder.transformer
    if any(type(layer) is not family.block for layer in transformer.layers):
        return False
    upscaling = list(decoder.output_upscaling)
    if len(upscaling) != 5 or not isinstance(upscaling[1], family.norm2d):
        return False
    for conv in (upscaling[0], upscaling[3]):
        if (type(conv) is not nn.ConvTranspose2d or conv.kernel_size != (2, 2) or conv.stride != (2, 2)
                or conv.padding != (0, 0) or conv.output_padding != (0, 0) or conv.groups != 1
                or conv.dilation != (1, 1)):
            return False
    # The image side reads these modules' weights directly, so they must be the plain modules: a wrapped
    # one (LoRA, a parametrization) may compute something else and takes the general path.
    to_image = [layer.cross_attn_token_to_image for layer in transformer.layers]
    to_image.append(transformer.final_attn_token_to_image)
    to_token = [layer.cross_attn_image_to_token for layer in transformer.layers]
    linears = [attn.k_proj for attn in to_image] + [attn.v_proj for attn in to_image]
    linears += [attn.q_proj for attn in to_token] + [attn.out_proj for attn in to_token]
    norms = [layer.norm4 for layer in transformer.layers]
    if (any(type(attn) is not family.attention for attn in to_image + to_token)
            or any(type(linear) is not nn.Linear or linear.bias is None for linear in linears)
            or any(type(norm) is not nn.LayerNorm or norm.weight is None or norm.bias is None
                   or len(norm.normalized_shape) != 1 for norm in norms)
            or any(conv.bias is None for conv in (upscaling[0], upscaling[3]))):
        return False
    total = 1 + decoder.num_mask_tokens + tokens
    return all(attn.num_heads * total <= attn.internal_dim for attn in to_token)


def shares_image(image_embed: Tensor, dense: Tensor) -> bool:
    """One image, and one dense embedding broadcast to every prompt set (SAM's "no mask" embedding is
    `expand`ed, so its batch stride is 0); anything else (mask inputs, several images) does not."""
    return image_embed.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)


def decode_shared_image(
    decoder: MaskDecoder,
    image_embed: Tensor,
    image_pe: Tensor,
    dense: Tensor,
    sparse: Tensor,
    multimask: bool | None,
    chunk: int | None = None,
    upscale_chunk: int | None = None,
    high_res_features: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """`MaskDecoder.predict_masks` for B prompt sets on one image with one dense embedding.

    image_embed, image_pe: (1, C, h, w); dense: (1 or B, C, h, w) with every row the same (only row 0
    is read); sparse: (B, N, C) any tokens. Returns the (B, M, 4h, 4w) low-res mask logits and (B, M)
    predicted IoU of the chosen masks (M = 3 with `multimask`, else 1), as the general path does.
    `chunk` and `upscale_chunk` (prompt sets per pass) default to `chunk_sizes` of the grid.
    `high_res_features`: sam2's (1, C/8, 4h, 4w) and (1, C/4, 2h, 2w) maps, added after each
    ConvTranspose2d when the decoder `use_high_res_features`.
    """
    if getattr(decoder, "use_high_res_features", False) != (high_res_features is not None):
        raise ValueError("high_res_features: expected the two maps exactly when the decoder uses them, got "
                         f"{'none' if high_res_features is None else len(high_res_features)}")
    skips = None if high_res_features is None else _skip_rows(*high_res_features)
    default_chunk, default_upscale_chunk = chunk_sizes(image_embed.shape[-2] * image_embed.shape[-1])
    chunk, upscale_chunk = chunk or default_chunk, upscale_chunk or default_upscale_chunk
    # The stream starts as S = image + dense, the same for every prompt set: s = 1, m = 0.
    base = (image_embed[0] + dense[0]).flatten(1).transpose(0, 1)
    pe = image_pe[0].flatten(1).transpose(0, 1)
    stage = _Shared(base, pe, [])
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    chosen = (list(range(decoder.num_mask_tokens)) if multimask is None
              else list(range(1, decoder.num_mask_tokens)) if multimask else [0])
    masks, ious = [], []
    for start in range(0, sparse.shape[0], chunk):
        part = sparse[start:start + chunk]
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(part.shape[0], -1, -1), part), dim=1)
        stream, hyper_in, iou_pred = _transformer(decoder, stage, tokens, chosen)
        ious.append(iou_pred)
        conv = _first_upscaling(decoder, stream)
        # From the first ConvTranspose2d on every prompt set has its own (4h x 4w) feature maps: a few
        # prompt sets at a time keep them in cache.
        for first in range(0, part.shape[0], upscale_chunk):
            rows = slice(first, first + upscale_chunk)
            masks.append(_upscale_masks(decoder, stream.select(rows), conv[rows], hyper_in[rows],
                                        image_embed.shape[-2:], skips))
    return torch.cat(masks), torch.cat(ious)


# ---- the prompt-independent half of the stream ----------------------------------------------------------

@dataclass
class _Group:
    """A group of rows of Phi: attention rows (per head, token values times `shared`'s head block) or
    constant rows (`shared` itself, the same for every prompt set)."""

    shared: Tensor  # attention: (d, C), out_proj.weight^T times the gains since; constant: (k, C)
    heads: int  # 0 for constant rows


@dataclass
class _Projection:
    """A linear map W, b (optionally of stream + positional encoding) applied to the shared parts."""

    base: Tensor  # (N, w): S W^T
    extra: Tensor  # (N, w): P W^T + b with the positional encoding, else b (w,)
    groups: list[Tensor]  # per group: shared @ W^T, (d, w) or (k, w)
    bias: Tensor | None = None
    _with_bias: list[Tensor] | None = field(default=None, repr=False)

    def groups_with_bias(self) -> list[Tensor]:
        """`groups` with b added to the last row: once a stream has been updated, the last row of U^T
        is all ones (an out_proj bias or LayerNorm beta row), so X W^T + b = s * (S W^T) + U (Phi W^T)
        with b inside Phi W^T, and the bias costs no pass over the (N, w) output."""
        if self._with_bias is None:
            last = self.groups[-1]
            self._with_bias = self.groups[:-1] + [torch.cat([last[:-1], last[-1:] + self.bias])]
        return self._with_bias


class _Shared:
    """S, P and Phi's shared factors at one stage of the decoder, with memoised products.

    The first chunk of prompt sets computes every product; the later chunks find them here.
    """

    def __init__(self, base: Tensor, pe: Tensor, groups: list[_Group]):
        self.base, self.pe, self.groups = base, pe, groups
        self._memo: dict = {}

    def memo(self, key, compute: Callable):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def project(self, weight: Tensor, bias: Tensor | None, with_pe: bool) -> _Projection:
        def compute() -> _Projection:
            extra = bias if bias is not None else weight.new_zeros(weight.shape[0])
            if with_pe:
                extra = F.linear(self.pe, weight, bias)
            groups = [group.shared @ weight.T for group in self.groups]
            return _Projection(self.base @ weight.T, extra, groups, bias)
        return self.memo(("project", id(weight), with_pe), compute)

    def after_update(self, attn: Attention) -> _Shared:
        """+ sum_h A_h v_h Wo_h^T + bo: an attention group Wo^T and the constant row bo."""
        def compute() -> _Shared:
            groups = self.groups + [_Group(attn.out_proj.weight.T, attn.num_heads)]
            return _Shared(self.base, self.pe, _append_constant(groups, attn.out_proj.bias[None]))
        return self.memo(("update", id(attn)), compute)

    def after_norm(self, norm: nn.LayerNorm) -> _Shared:
        """LayerNorm: S, every row of Phi times g; constant rows g (coefficient -mu/sigma) and beta (1)."""
        def compute() -> _Shared:
            gain = norm.weight
            groups = [_Group(group.shared * gain, group.heads) for group in self.groups]
            return _Shared(self.base * gain, self.pe, _append_constant(groups, torch.stack([gain, norm.bias])))
        return self.memo(("norm", id(norm)), compute)

    def norm_terms(self) -> _NormTerms:
        """The prompt-independent parts of each row's mean and variance (see `_layer_norm`)."""
        def compute() -> _NormTerms:
            centred_base = self.base - self.base.mean(1, keepdim=True)
            centred = [group.shared - group.shared.mean(1, keepdim=True) for group in self.groups]
            grams = {(p, q): centred[p] @ centred[q].T
                     for p in range(len(centred)) for q in range(p, len(centred))}
            return _NormTerms(
                base_mean=self.base.mean(1), base_square=centred_base.pow(2).sum(1),
                group_means=[group.shared.mean(1) for group in self.groups],
                base_cross=[centred_base @ c.T for c in centred], grams=grams)
        return self.memo("norm_terms", compute)


@dataclass
class _NormTerms:
    base_mean: Tensor  # (N,) row means of S
    base_square: Tensor  # (N,) |S_i - mean(S_i)|^2
    group_means: list[Tensor]  # per group: row means of its shared factor, (d,) or (k,)
    base_cross: list[Tensor]  # per group: centred S times centred shared factor^T, (N, d) or (N, k)
    grams: dict  # (p, q), p <= q: centred factor p times centred factor q^T


def _append_constant(groups: list[_Group], rows: Tensor) -> list[_Group]:
    # Consecutive constant rows share one group, so each update and LayerNorm adds at most two groups.
    if groups and groups[-1].heads == 0:
        return groups[:-1] + [_Group(torch.cat([groups[-1].shared, rows]), 0)]
    return groups + [_Group(rows, 0)]


# ---- the per-prompt half -------------------------------------------------------------------------------

@dataclass
class _Stream:
    """Prompt sets' image streams X_b = diag(s_b) S + U_b Phi_b (S and Phi's shared factors in `shared`).

    U_b is stored transposed, (m, N): attention probabilities arrive as (H, T, N) rows (a softmax over T
    is then a reduction over a non-contiguous axis, vectorised along N), new columns are appended by
    concatenating along m, and BLAS takes the transposed view where U_b (N, m) is the operand.
    """

    shared: _Shared
    scale: Tensor | None  # (B, N) s_b; None while it is 1
    coef: Tensor  # (B, m, N) U_b^T, rows in the order of shared.groups' rows
    values: list[Tensor | None]  # per group: attention (B, H, T, hd) token values, constant None

    def select(self, rows: slice) -> _Stream:
        """The streams of some prompt sets."""
        scale = None if self.scale is None else self.scale[rows]
        return _Stream(self.shared, scale, self.coef[rows], [v if v is None else v[rows] for v in self.values])


def _rows_times(stream: _Stream, projected_groups: list[Tensor]) -> Tensor:
    """Phi_b W^T, (B, m, w), from the shared groups' projections: for attention rows of head h,
    (v_h Wo_h^T diag(gains)) W^T = v_h (Wo_h^T diag(gains) W^T), hd instead of C multiply-adds per row."""
    batch = stream.coef.shape[0]
    parts = []
    for values, projected in zip(stream.values, projected_groups):
        if values is None:
            parts.append(projected.expand(batch, -1, -1))
        else:
            heads, head_dim = values.shape[1], values.shape[3]
            rows = torch.einsum("bhtk,hkw->bhtw", values, projected.view(heads, head_dim, -1))
            parts.append(rows.reshape(batch, -1, projected.shape[-1]))
    return torch.cat(parts, dim=1)


def _by_head(shared: _Shared, key, terms: Callable[[], list[Tensor]], heads: int) -> Tensor:
    """Shared (N, d) terms side by side as (H, hd, n*N): the right operand of one GEMM per head."""
    def compute() -> Tensor:
        stacked = torch.cat(terms())
        return stacked.view(stacked.shape[0], heads, -1).permute(1, 2, 0)
    return shared.memo(key, compute)


def _head_products(vectors: Tensor, shared_by_head: Tensor) -> Tensor:
    """vectors (B, T, H, hd) times shared (H, hd, W) per head: (B, H, T, W), one GEMM per head for
    all prompt sets together."""
    batch, count, heads, head_dim = vectors.shape
    by_head = vectors.permute(2, 0, 1, 3).reshape(heads, batch * count, head_dim)
    return torch.bmm(by_head, shared_by_head).view(heads, batch, count, -1).transpose(0, 1)


def _scores(q: Tensor, stream: _Stream, linear: nn.Linear, key) -> Tensor:
    """q_h . ((X_b + P) W^T + b)_{i,h} for token vectors q (B, T, H, hd): (B, H, T, N), from
    s_i (S W^T)_i, U_i (Phi W^T) and (P W^T + b)_i, never forming the (N, d) projection per prompt."""
    batch, count, heads, head_dim = q.shape
    rows = stream.coef.shape[2]
    shared = stream.shared
    projected = shared.project(linear.weight, linear.bias, with_pe=True)
    if stream.scale is None:
        # s = 1: the image part and the positional part are one shared (N, d) matrix.
        base = _head_products(q, _by_head(shared, key, lambda: [projected.base + projected.extra], heads))
        pe = None
    else:
        both = _head_products(q, _by_head(shared, key, lambda: [projected.base, projected.extra], heads))
        base, pe = both[..., :rows], both[..., rows:]
    if not stream.coef.shape[1]:
        return base if pe is None else torch.addcmul(pe, base, stream.scale[:, None, None, :])
    # U_i (Phi W^T)_h . q_h = ((Phi W^T)_h q_h)^T U_i: an (H*T, m) matrix per prompt set, then one
    # (H*T, m) x (m, N) product; the shared parts are added into its output in place.
    phi = _rows_times(stream, projected.groups).view(batch, -1, heads, head_dim)
    q_rows = torch.einsum("bthk,bjhk->bhtj", q, phi).reshape(batch, heads * count, -1)
    scores = torch.bmm(q_rows, stream.coef).view(batch, heads, count, rows)
    if pe is None:
        return scores.add_(base)
    return scores.add_(pe).addcmul_(base, stream.scale[:, None, None, :])


def _token_to_image(attn: Attention, queries: Tensor, stream: _Stream) -> Tensor:
    """attn(q=queries, k=X_b + P, v=X_b) without materialising the projected stream."""
    batch, count, _ = queries.shape
    heads, head_dim = attn.num_heads, attn.internal_dim // attn.num_heads
    # The 1/sqrt(hd) of the scores is applied to q first: the same product, one multiply per q entry.
    q = (attn.q_proj(queries) * head_dim ** -0.5).view(batch, count, heads, head_dim)
    probs = torch.softmax(_scores(q, stream, attn.k_proj, ("keys", id(attn))), dim=-1)  # (B, H, T, N)

    # sum_i p_i v_i = (p * s)(S W_v^T) + (p U)(Phi W_v^T) + b_v: the probabilities sum to 1.
    shared = stream.shared
    values = shared.project(attn.v_proj.weight, attn.v_proj.bias, with_pe=False)
    weighted = probs if stream.scale is None else probs * stream.scale[:, None, None, :]
    shared_values = shared.memo(("values", id(attn)),
                                lambda: values.base.view(-1, heads, head_dim).transpose(0, 1))  # (H, N, hd)
    out = _head_products(weighted.transpose(1, 2), shared_values)  # (B, H, T, hd)
    if stream.coef.shape[1]:
        phi = _rows_times(stream, values.groups).view(batch, -1, heads, head_dim)
        mixed = torch.bmm(probs.reshape(batch, heads * count, -1), stream.coef.transpose(1, 2))
        out = out + torch.einsum("bhtj,bjhk->bhtk", mixed.view(batch, heads, count, -1), phi)
    out = out + values.extra.view(heads, 1, head_dim)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, count, heads * head_dim))


def _image_to_token(attn: Attention, queries: Tensor, query_pe: Tensor, stream: _Stream) -> _Stream:
    """X_b + attn(q=X_b + P, k=queries + query_pe, v=queries), kept factored: U gains the (N, H*T)
    probabilities and a column of ones, Phi the rows v_h Wo_h^T and the row bo."""
    batch, count, _ = queries.shape
    heads, head_dim = attn.num_heads, attn.internal_dim // attn.num_heads
    k = (attn.k_proj(queries + query_pe) * head_dim ** -0.5).view(batch, count, heads, head_dim)
    v = attn.v_proj(queries).view(batch, count, heads, head_dim).transpose(1, 2)  # (B, H, T, hd)
    # The image rows are the queries here: the same scores, normalised over the tokens instead.
    probs = torch.softmax(_scores(k, stream, attn.q_proj, ("queries", id(attn))), dim=2)  # (B, H, T, N)

    # out_proj(recombined A_h v_h) + bo = sum_h A_h (v_h Wo_h^T) + bo: append A and a column of ones.
    rows = stream.coef.shape[2]
    shared = stream.shared.after_update(attn)
    coef = torch.cat([stream.coef, probs.reshape(batch, heads * count, rows), probs.new_ones(batch, 1, rows)], 1)
    return _Stream(shared, stream.scale, coef, _values_for(shared, stream.values + [v]))


def _values_for(shared: _Shared, values: list[Tensor | None]) -> list[Tensor | None]:
    """Per-prompt values aligned with shared.groups (constant groups hold None)."""
    attention = iter(v for v in values if v is not None)
    return [next(attention) if group.heads else None for group in shared.groups]


def _layer_norm(norm: nn.LayerNorm, stream: _Stream) -> _Stream:
    """LayerNorm of every row of X_b = diag(s) S + U Phi, from the factors.

    mean_i = s_i mean(S_i) + U_i mean(Phi rows). For the variance, centre each row of S and of Phi
    (a shared operation, since Phi's rows are token values times shared factors) and expand
    |s_i Sc_i + U_i Phic|^2 = s_i^2 |Sc_i|^2 + U_i (2 s_i Phic Sc_i^T + (Phic Phic^T) U_i^T): a sum of
    squares plus one cross term, with no E[x^2] - mean^2 cancellation. Phic Sc^T and the Gram
    Phic Phic^T come from shared products and the (B, H, T, hd) values, never from (N, C) tensors.
    """
    shared, terms = stream.shared, stream.shared.norm_terms()
    coef = stream.coef
    batch, _, rows = coef.shape
    channels = shared.base.shape[1]
    # Per group of rows of U^T: its part of the means (B, rows_g) and of U_i . (Phic Sc_i^T), (B, N).
    means, cross, first = [], 0, 0
    for index, (values, mean, base_cross) in enumerate(zip(stream.values, terms.group_means, terms.base_cross)):
        if values is None:
            means.append(mean.expand(batch, -1))
            part = (coef[:, first:first + len(mean)] * base_cross.T).sum(1)
            first += len(mean)
        else:
            heads, count, head_dim = values.shape[1:]
            means.append(torch.einsum("bhtk,hk->bht", values, mean.view(heads, head_dim)).reshape(batch, -1))
            by_head = _by_head(shared, ("cross", index), lambda: [base_cross], heads)
            products = _head_products(values.transpose(1, 2), by_head).reshape(batch, heads * count, rows)
            part = (coef[:, first:first + heads * count] * products).sum(1)
            first += heads * count
        cross = cross + part
    mean = torch.bmm(torch.cat(means, dim=1)[:, None], coef)[:, 0]
    square = (coef * torch.bmm(_gram(stream, terms), coef)).sum(1)
    if stream.scale is None:
        mean = mean + terms.base_mean
        variance = terms.base_square + 2 * cross + square
    else:
        mean = mean + stream.scale * terms.base_mean
        variance = stream.scale * (stream.scale * terms.base_square + 2 * cross) + square
    inv_std = torch.rsqrt(variance.clamp_min(0) / channels + norm.eps)
    scale = inv_std if stream.scale is None else stream.scale * inv_std
    coef = torch.cat([coef * inv_std[:, None], (-mean * inv_std)[:, None], coef.new_ones(batch, 1, rows)], 1)
    after = shared.after_norm(norm)
    return _Stream(after, scale, coef, _values_for(after, stream.values))


def _gram(stream: _Stream, terms: _NormTerms) -> Tensor:
    """Phic_b Phic_b^T, (B, m, m), block by block from the shared grams of the centred factors:
    attention rows (h, t) and (g, s) of groups p, q give v_p[h, t] (Fp_h Fq_g^T) v_q[g, s]."""
    batch = stream.coef.shape[0]
    values = stream.values
    blocks: dict = {}
    for p in range(len(values)):
        for q in range(p, len(values)):
            gram = terms.grams[(p, q)]
            vp, vq = values[p], values[q]
            if vp is None and vq is None:
                block = gram.expand(batch, -1, -1)
            elif vp is None:
                heads, count, head_dim = vq.shape[1:]
                block = torch.einsum("jhk,bhtk->bjht", gram.view(-1, heads, head_dim), vq)
                block = block.reshape(batch, len(gram), -1)
            else:
                heads, count, head_dim = vp.shape[1:]
                left = torch.einsum("bhtk,hkl->bhtl", vp, gram.view(heads, head_dim, -1))
                if vq is None:
                    block = left.reshape(batch, heads * count, -1)
                else:
                    heads_q, count_q, head_dim_q = vq.shape[1:]
                    left = left.reshape(batch, heads, count, heads_q, head_dim_q)
                    block = torch.einsum("bhtgk,bgsk->bhtgs", left, vq).reshape(batch, heads * count, -1)
            blocks[(p, q)] = block
            if q != p:
                blocks[(q, p)] = block.transpose(1, 2)
    return torch.cat([torch.cat([blocks[(p, q)] for q in range(len(values))], dim=2)
                      for p in range(len(values))], dim=1)


# ---- the decoder, one chunk of prompt sets at a time ------------------------------------------------

def _transformer(decoder: MaskDecoder, start: _Shared, tokens: Tensor,
                 chosen: list[int]) -> tuple[_Stream, Tensor, Tensor]:
    """The two-way transformer with a factored image stream, then the token heads: the final stream,
    the hypernetwork outputs (B, M, C/8) of the chosen masks and the (B, M) IoU predictions."""
    transformer = decoder.transformer
    batch = tokens.shape[0]
    stream = _Stream(start, None, tokens.new_zeros(batch, 0, start.base.shape[0]), [])
    queries, query_pe = tokens, tokens
    for layer in transformer.layers:
        # Token side: the block's own modules, batched over the prompt sets, as TwoWayAttentionBlock.
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        attn_out = _token_to_image(layer.cross_attn_token_to_image, queries + query_pe, stream)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        # Image side: keys + image_to_token attention, then norm4, both factored.
        stream = _image_to_token(layer.cross_attn_image_to_token, queries, query_pe, stream)
        stream = _layer_norm(layer.norm4, stream)

    # Final token-to-image attention: only the IoU and mask tokens are read afterwards.
    outputs = 1 + decoder.num_mask_tokens
    queries, query_pe = queries[:, :outputs], query_pe[:, :outputs]
    attn_out = _token_to_image(transformer.final_attn_token_to_image, queries + query_pe, stream)
    queries = transformer.norm_final_attn(queries + attn_out)
    iou_pred = decoder.iou_prediction_head(queries[:, 0])
    # Every hypernetwork MLP runs, as in predict_masks, so that a trained decoder's unused one gets a zero
    # gradient rather than none (an optimizer treats the two differently); only the chosen masks are made.
    hyper_in = torch.stack([mlp(queries[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    return stream, hyper_in[:, chosen], iou_pred[:, chosen]


def _conv_as_linear(shared: _Shared, conv: nn.ConvTranspose2d, taps: int) -> list[tuple[Tensor, Tensor]]:
    """A kernel 2, stride 2 ConvTranspose2d maps each input pixel's channels to its 2 x 2 block of
    outputs: a linear map in -> (ky, kx, out), output channels last. taps=4: one map for the whole
    block; taps=2: one map in -> (kx, out) per kernel row ky."""
    def compute() -> list[tuple[Tensor, Tensor]]:
        weight = conv.weight  # (in, out, ky, kx)
        if taps == 4:
            return [(weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]), conv.bias.repeat(4))]
        return [(weight[:, :, ky].permute(2, 1, 0).reshape(-1, weight.shape[0]), conv.bias.repeat(2))
                for ky in range(2)]
    return shared.memo(("conv", id(conv), taps), compute)


def _first_upscaling(decoder: MaskDecoder, stream: _Stream) -> Tensor:
    """Phi_b W^T (B, m, 4 C') for the first ConvTranspose2d as a linear map W, its bias folded in."""
    [(weight, bias)] = _conv_as_linear(stream.shared, decoder.output_upscaling[0], 4)
    return _rows_times(stream, stream.shared.project(weight, bias, with_pe=False).groups_with_bias())


def _skip_rows(feat_s0: Tensor, feat_s1: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """sam2's high-resolution features in `_upscale_masks`' row order: per kernel row ky1, the 2x map's
    rows 2y + ky1 as (h * 2w, C/4); per (ky1, ky2), the 4x map's rows 4y + 2 ky1 + ky2 as (h * 4w, C/8)."""
    s1 = [feat_s1[0, :, ky1::2].permute(1, 2, 0).reshape(-1, feat_s1.shape[1]) for ky1 in range(2)]
    s0 = [feat_s0[0, :, row::4].permute(1, 2, 0).reshape(-1, feat_s0.shape[1]) for row in range(4)]
    return s1, s0


def _upscale_masks(decoder: MaskDecoder, stream: _Stream, conv_rows: Tensor, hyper_in: Tensor,
                   grid: torch.Size, skips: tuple[list[Tensor], list[Tensor]] | None = None) -> Tensor:
    """output_upscaling and the hypernetwork product for a few prompt sets.

    The first ConvTranspose2d is a factored projection of the stream (`_first_upscaling`); after its
    LayerNorm2d + GELU the maps are materialised per prompt set. Output pixel
    (4y + 2 ky1 + ky2, 4x + 2 kx1 + kx2) comes from input pixel (y, x) through the kernel taps (ky1, kx1)
    then (ky2, kx2). Running each ConvTranspose2d once per kernel row (ky1, then ky2) makes every
    intermediate a plain (pixels, channels) matrix whose rows are already in image order along x; the
    four (ky1, ky2) results interleave by whole rows at the end, so nothing large is ever permuted.
    """
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    batch, _, rows = stream.coef.shape
    height, width = grid
    shared = stream.shared
    [(weight1, bias1)] = _conv_as_linear(shared, conv1, 4)
    base = shared.project(weight1, bias1, with_pe=False).base  # (N, 4 C'): S W^T
    masks = []
    half = conv_rows.shape[-1] // 2
    for ky1 in range(2):
        columns = slice(ky1 * half, (ky1 + 1) * half)
        up = torch.bmm(stream.coef.transpose(1, 2), conv_rows[..., columns])
        up = up.addcmul_(stream.scale[..., None], base[:, columns])  # s_i (S W^T)_i + U_i (Phi W^T + bias)
        up = up.view(batch, 2 * rows, -1)  # rows (y, x, kx1): the 2x upscaled image's row ky1
        if skips is not None:
            up = up + skips[0][ky1]  # sam2: dc1(src) + feat_s1
        up = act1(F.layer_norm(up, up.shape[-1:], norm.weight, norm.bias, norm.eps))
        for ky2, (weight2, bias2) in enumerate(_conv_as_linear(shared, conv2, 2)):
            features = F.linear(up, weight2, bias2).view(batch, 4 * rows, -1)  # rows (y, x, kx1, kx2)
            if skips is not None:
                features = features + skips[1][2 * ky1 + ky2]  # sam2: dc2(.) + feat_s0
            features = act2(features)
            masks.append(torch.bmm(hyper_in, features.transpose(1, 2)).view(batch, -1, height, 4 * width))
    # masks[2 ky1 + ky2][b, m, y, 4x + 2 kx1 + kx2] is output row 4y + 2 ky1 + ky2.
    return torch.stack(masks, dim=3).view(batch, -1, 4 * height, 4 * width)
