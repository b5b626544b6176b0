"""The one seam every method in samkit plugs into: image embedding -> prompt tokens -> mask decoder.

An adapter wraps one real SAM implementation (`segment_anything`, `sam2` or `transformers`)
and exposes the same three batched calls:

    embedding = model.embed(images)                                # image encoder, run once per image
    sparse, dense = model.prompt_tokens(points, labels, boxes, masks)  # SAM's prompt encoder
    low_res_logits, iou = model.decode(embedding, sparse, dense)       # SAM's mask decoder

`decode` accepts any (B, N, 256) sparse tokens, not only those made by `prompt_tokens`:
the four papers of this kit differ exactly in where those tokens come from.

Training reaches SAM's parts through the adapter too (`image_encoder`, `prompt_encoder`,
`mask_decoder`, `decoder_cross_attentions()`), never through one implementation's attribute
names; a model without the part a method needs raises `UnsupportedModelError` naming it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samkit.errors import UnsupportedModelError, bad_argument
from samkit.images import ImageLike, as_rgb_uint8

Size = tuple[int, int]  # (height, width)
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass
class ImageEmbedding:
    """The image encoder's output for a batch of images, with what is needed to map masks back."""

    image_embed: torch.Tensor  # (B, 256, h, w)
    original_sizes: list[Size]  # each image's (H, W) before resizing
    input_sizes: list[Size]  # each image's (H, W) after resizing, before padding
    high_res_feats: list[torch.Tensor] = field(default_factory=list)  # SAM2's extra feature levels

    def __len__(self) -> int:
        return self.image_embed.shape[0]

    def select(self, index: int | slice | Sequence[int]) -> ImageEmbedding:
        """The embeddings of some images of the batch (batch dimension kept)."""
        rows = [index] if isinstance(index, int) else (
            list(range(len(self)))[index] if isinstance(index, slice) else list(index))
        return ImageEmbedding(
            image_embed=self.image_embed[rows],
            original_sizes=[self.original_sizes[r] for r in rows],
            input_sizes=[self.input_sizes[r] for r in rows],
            high_res_feats=[feat[rows] for feat in self.high_res_feats],
        )

    def to(self, device: torch.device | str) -> ImageEmbedding:
        return replace(self, image_embed=self.image_embed.to(device),
                       high_res_feats=[feat.to(device) for feat in self.high_res_feats])

    @staticmethod
    def cat(embeddings: Sequence[ImageEmbedding]) -> ImageEmbedding:
        """Stack single-image embeddings into one batch."""
        first = embeddings[0]
        return ImageEmbedding(
            image_embed=torch.cat([e.image_embed for e in embeddings]),
            original_sizes=[s for e in embeddings for s in e.original_sizes],
            input_sizes=[s for e in embeddings for s in e.input_sizes],
            high_res_feats=[torch.cat([e.high_res_feats[level] for e in embeddings])
                            for level in range(len(first.high_res_feats))],
        )


def masks_on_grid(masks: np.ndarray | torch.Tensor, input_size: Size, image_size: int, grid: Size,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(G, H, W) masks -> (G, h, w) soft masks on a grid of SAM's input frame: resized as SAM resizes
    the image (to `input_size`, bilinear), padded bottom/right to the `image_size` square, then each
    cell's covered share (area average). The frame of image embeddings and of low-res mask logits."""
    values = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks, device=device)
    resized = F.interpolate(values.float()[None], size=tuple(input_size), mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]))
    return F.adaptive_avg_pool2d(padded, tuple(grid))[0]


def _as_float_tensor(value, name: str, device: torch.device) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float32) if not torch.is_tensor(value) else value)
    except (TypeError, ValueError):
        raise bad_argument(name, "numbers", value) from None
    if not torch.is_floating_point(tensor):
        tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise bad_argument(name, "finite values", value)
    return tensor.to(device=device, dtype=torch.float32)


class SamAdapter(ABC):
    """A promptable SAM behind the seam `embed` -> `prompt_tokens` -> `decode`.

    Subclasses implement the few calls that differ between implementations; the checks on
    inputs, batching and broadcasting rules live here once.
    """

    name: str
    checkpoint_sha256: str | None  # identifies the weights for the embedding cache; None = unknown
    image_size: int  # side of the square the image encoder sees
    mask_threshold: float = 0.0
    module: nn.Module  # the wrapped model (for .parameters(), LoRA, training)
    device: torch.device

    # ---- image encoder -------------------------------------------------------------------
    def embed(self, images: ImageLike | Sequence[ImageLike], grad: bool = False) -> ImageEmbedding:
        """Run the image encoder on one image or a list of images.

        `grad=False` (the default) runs without autograd: the encoder is frozen in most methods.
        """
        single = not isinstance(images, (list, tuple))
        batch = [as_rgb_uint8(image, "images" if single else f"images[{i}]")
                 for i, image in enumerate([images] if single else images)]
        if not batch:
            raise bad_argument("images", "at least one image", images)
        with torch.set_grad_enabled(grad):
            pixels, input_sizes = self.preprocess(batch)
            image_embed, high_res = self.encode(pixels)
        return ImageEmbedding(image_embed, [tuple(image.shape[:2]) for image in batch],
                              input_sizes, list(high_res))

    @abstractmethod
    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Size]]:
        """RGB uint8 images -> the encoder's input batch and each image's resized size."""

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """The encoder's input batch -> (image embeddings, extra high-resolution features)."""

    # ---- prompt encoder ------------------------------------------------------------------
    def prompt_tokens(
        self,
        points=None,
        labels=None,
        boxes=None,
        masks=None,
        original_size: Size | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode clicks, boxes and mask prompts into sparse (B, N, 256) and dense tokens.

        points: (B, N, 2) or (N, 2) as (x, y); labels: (B, N) or (N,), 1 positive, 0 negative;
        boxes: (B, 4) or (4,) as XYXY; masks: (B, 1, 256, 256) low-res logits.
        Coordinates are pixels of the original image when `original_size` (H, W) is given,
        otherwise pixels of the model's input frame (`image_size` square).
        """
        frame = original_size or (self.image_size, self.image_size)
        point_coords = point_labels = box_coords = mask_logits = None
        if points is not None:
            point_coords, point_labels = self._check_points(points, labels, frame)
        elif labels is not None:
            raise bad_argument("points", "point coordinates, since labels were given", None)
        if boxes is not None:
            box_coords = self._check_boxes(boxes, frame)
        if masks is not None:
            mask_logits = _as_float_tensor(masks, "masks", self.device)
            if mask_logits.ndim == 3:
                mask_logits = mask_logits[None]
            if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
                raise bad_argument("masks", "low-res mask logits of shape (B, 1, H, W)", masks)
        sizes = {t.shape[0] for t in (point_coords, box_coords, mask_logits) if t is not None}
        if len(sizes) > 1:
            raise bad_argument("points/boxes/masks", "the same batch size B for every prompt kind",
                               f"batch sizes {sorted(sizes)}")
        if original_size is not None:
            if point_coords is not None:
                point_coords = self.transform_coords(point_coords, original_size)
            if box_coords is not None:
                box_coords = self.transform_coords(box_coords.reshape(-1, 2, 2), original_size).reshape(-1, 4)
        return self.encode_prompts(point_coords, point_labels, box_coords, mask_logits)

    def _check_points(self, points, labels, frame: Size) -> tuple[torch.Tensor, torch.Tensor]:
        coords = _as_float_tensor(points, "points", self.device)
        if coords.ndim == 2:
            coords = coords[None]
        if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
            raise bad_argument("points", "(x, y) coordinates of shape (N, 2) or (B, N, 2)", points)
        if labels is None:
            raise bad_argument("labels", "one label per point (1 positive, 0 negative)", None)
        point_labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
        if point_labels.ndim == 1:
            point_labels = point_labels[None]
        if tuple(point_labels.shape) != tuple(coords.shape[:2]):
            raise bad_argument("labels", f"shape {tuple(coords.shape[:2])} to match points", labels)
        if point_labels.is_floating_point() and not torch.equal(point_labels, point_labels.round()):
            raise bad_argument("labels", "integer labels", labels)
        point_labels = point_labels.to(device=self.device, dtype=torch.int)
        if not torch.isin(point_labels, torch.tensor([-1, 0, 1, 2, 3], device=self.device)).all():
            raise bad_argument("labels", "values in {1 positive, 0 negative, -1 padding}", labels)
        height, width = frame
        x, y = coords[..., 0], coords[..., 1]
        outside = (x < 0) | (x > width) | (y < 0) | (y > height)
        if outside.any():
            first = coords[outside][0].tolist()
            raise bad_argument("points", f"points inside the {width} x {height} (W x H) image",
                               f"a point at (x={first[0]:.1f}, y={first[1]:.1f})")
        return coords, point_labels

    def _check_boxes(self, boxes, frame: Size) -> torch.Tensor:
        box_coords = _as_float_tensor(boxes, "boxes", self.device)
        if box_coords.ndim == 1:
            box_coords = box_coords[None]
        if box_coords.ndim != 2 or box_coords.shape[-1] != 4:
            raise bad_argument("boxes", "XYXY boxes of shape (4,) or (B, 4)", boxes)
        x0, y0, x1, y1 = box_coords.unbind(-1)
        if ((x1 < x0) | (y1 < y0)).any():
            raise bad_argument("boxes", "x0 <= x1 and y0 <= y1 (XYXY order)", boxes)
        height, width = frame
        if ((x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height)).any():
            raise bad_argument("boxes", f"boxes inside the {width} x {height} (W x H) image", boxes)
        return box_coords

    @abstractmethod
    def transform_coords(self, coords: torch.Tensor, original_size: Size) -> torch.Tensor:
        """(..., 2) pixel coordinates of the original image -> the model's input frame."""

    @abstractmethod
    def encode_prompts(self, points, labels, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked tensors in the input frame -> (sparse (B, N, 256), dense (B, 256, h, w))."""

    # ---- mask decoder --------------------------------------------------------------------
    def decode(
        self,
        embedding: ImageEmbedding,
        sparse: torch.Tensor,
        dense: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the mask decoder: (B, M, 256, 256) low-res mask logits and (B, M) predicted IoU.

        `embedding` holds one image (broadcast to all B prompt sets) or B images (one per set).
        `sparse` is any (B, N, 256) token tensor; `dense` defaults to SAM's "no mask" embedding.
        M is 3 with `multimask`, else 1. Autograd flows to `sparse` and `dense`.
        """
        if not isinstance(embedding, ImageEmbedding):
            raise bad_argument("embedding", "an ImageEmbedding from model.embed(...)", embedding)
        if not torch.is_tensor(sparse) or sparse.ndim != 3 or sparse.shape[-1] != self.token_dim:
            raise bad_argument("sparse", f"prompt tokens of shape (B, N, {self.token_dim})", sparse)
        batch = sparse.shape[0]
        if len(embedding) not in (1, batch):
            raise bad_argument("embedding", f"1 image or {batch} images (one per prompt set)",
                               f"{len(embedding)} images")
        if dense is None:
            dense = self.no_mask_dense(batch)
        if not torch.is_tensor(dense) or dense.ndim != 4 or dense.shape[0] not in (1, batch):
            raise bad_argument("dense", f"a dense embedding of shape (1 or {batch}, C, h, w)", dense)
        if dense.shape[0] != batch:
            dense = dense.expand(batch, -1, -1, -1)
        return self.run_decoder(embedding.to(self.device), sparse.to(self.device), dense.to(self.device),
                                multimask)

    def decode_both(
        self,
        embedding: ImageEmbedding,
        sparse: torch.Tensor,
        dense: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Both outputs: ((B, 3, ...) candidates, (B, 3) IoU) and ((B, 1, ...) single mask, (B, 1) IoU).

        Two decoder runs here; adapters whose decoder yields both from one run override it.
        """
        return (self.decode(embedding, sparse, dense, multimask=True),
                self.decode(embedding, sparse, dense, multimask=False))

    token_dim: int = 256

    @abstractmethod
    def no_mask_dense(self, batch: int) -> torch.Tensor:
        """The dense embedding SAM uses when no mask prompt is given, for `batch` prompt sets."""

    @abstractmethod
    def run_decoder(self, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor,
                    multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The implementation's mask decoder on checked, aligned inputs."""

    @abstractmethod
    def postprocess_masks(self, low_res: torch.Tensor, input_size: Size, original_size: Size) -> torch.Tensor:
        """(B, M, 256, 256) low-res logits -> (B, M, H, W) logits at the original image size."""

    def low_res_output(self, low_res: torch.Tensor) -> torch.Tensor:
        """The low-res logits a predictor hands back (SAM2 clamps them; SAM does not)."""
        return low_res

    # The fast path for many prompt sets on one image (segment_anything's decoder only, see
    # `SegmentAnythingAdapter`); methods that change the decoder's modules set it to False.
    shared_image_decoding: bool = False

    # ---- SAM's parts, for training ---------------------------------------------------------
    # Where each part lives inside `module` (segment_anything's names; SAM 2 and transformers
    # override). LoRA builds its layer patterns from these paths.
    part_paths: dict[str, str] = {"image_encoder": "image_encoder", "prompt_encoder": "prompt_encoder",
                                  "mask_decoder": "mask_decoder"}

    def part(self, name: str) -> nn.Module:
        """SAM's part `name` ("image_encoder", "prompt_encoder" or "mask_decoder") inside `module`."""
        if name not in PARTS:
            raise bad_argument("name", f"one of {PARTS}", name)
        path = self.part_paths.get(name)
        if path:
            try:
                return self.module.get_submodule(path)
            except AttributeError:
                pass
        raise UnsupportedModelError(f"{self.name} ({type(self).__name__}) has no {name} at "
                                    f"module.{path or '?'}")

    @property
    def image_encoder(self) -> nn.Module:
        return self.part("image_encoder")

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.part("prompt_encoder")

    @property
    def mask_decoder(self) -> nn.Module:
        return self.part("mask_decoder")

    @property
    def low_res_size(self) -> Size:
        """(h, w) of the decoder's low-res mask logits and of mask prompts: 4x the embedding grid."""
        return tuple(self.prompt_encoder.mask_input_size)

    @property
    def output_tokens(self) -> int:
        """The decoder's own tokens ahead of the prompt tokens: the IoU token and the mask tokens
        (and SAM 2's object-score token)."""
        decoder = self.mask_decoder
        return 1 + decoder.num_mask_tokens + int(bool(getattr(decoder, "pred_obj_scores", False)))

    def decoder_cross_attentions(self) -> list[tuple[nn.Module, str, bool]]:
        """(owner, attribute, image_to_token) of every cross-attention of the mask decoder's two-way
        transformer, in the order they run. SAM and SAM 2 share this layout and their `Attention`
        (q, k, v) modules, so a method may swap them (CPC-SAM's calibrated attention)."""
        transformer = getattr(self.mask_decoder, "transformer", None)
        layers = getattr(transformer, "layers", None)
        names = ("cross_attn_token_to_image", "cross_attn_image_to_token")
        if layers is None or not hasattr(transformer, "final_attn_token_to_image") or not all(
                hasattr(layer, name) for layer in layers for name in names):
            raise UnsupportedModelError(f"{self.name} ({type(self).__name__}): its mask decoder is not "
                                        "segment_anything's two-way transformer (layers with cross_attn_token_"
                                        "to_image / cross_attn_image_to_token, final_attn_token_to_image)")
        found = []
        for layer in layers:
            found += [(layer, names[0], False), (layer, names[1], True)]
        return found + [(transformer, "final_attn_token_to_image", False)]

    def __repr__(self) -> str:
        parameters = sum(p.numel() for p in self.module.parameters())
        return (f"{type(self).__name__}(name={self.name!r}, image_size={self.image_size}, "
                f"parameters={parameters / 1e6:.1f}M, device={self.device})")
