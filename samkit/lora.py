"""LoRA on SAM's attention projections, through peft.

    sam = add_lora(model.module, rank=4, parts=("mask_decoder",),
                   unfreeze=("mask_decoder.output_hypernetworks_mlps",))
    print(trainable_summary(sam))            # LoRA r=4 on mask_decoder: ... trainable of ... parameters
    optimizer = torch.optim.Adam([p for p in sam.parameters() if p.requires_grad], lr=1e-4)
    ...                                      # train through model.embed / prompt_tokens / decode
    torch.save(lora_state_dict(sam), "lora.pt")
    merge_lora(sam)                          # optional: fold B A into the weights, plain nn.Linear again

Which layers: "image_encoder" -> each ViT block's `attn.qkv` and `attn.proj`; "mask_decoder" -> the
two-way transformer's `q_proj`, `k_proj`, `v_proj`, `out_proj` (self-attention, both cross-attentions
and the final token-to-image attention). The prompt encoder has no attention and takes no LoRA.

Notes for the kit's seam (`samkit.models.sam1.SegmentAnythingAdapter`):
* The shared-image fast path (`shared_image_decoder`) reads some projections' `.weight` directly, which on
  a peft layer is the *base* weight only. So whoever puts LoRA on the decoder switches the adapter's
  `shared_image_decoding` off (`finetune` does), and `shared_image_decoder.supports` refuses any layer that
  is not a plain `nn.Linear` as a second guard: a decoder with LoRA takes the general path (slower for many
  clicks on one image; after `merge_lora` the fast path is exact again and may be switched back on).
* `model.embed` runs without autograd by default: to train image-encoder LoRA call `model.embed(x, grad=True)`.
* The disk embedding cache (`samkit.cache`) is keyed by the checkpoint's sha256, so it refuses an image
  encoder that carries LoRA layers. After `merge_lora` on the image encoder nothing shows the change:
  pass `disk_cache=False` to predictors of such a model.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from samkit.errors import bad_argument

# The attention projections per part, as regexes on module names below the part's path (peft full-matches
# `target_modules` against every module name). The image encoder pattern also allows a nested trunk
# (`image_encoder.trunk.blocks.N.attn` in SAM 2), and excludes `image_encoder.patch_embed.proj`, a Conv2d.
PART_LAYERS = {
    "image_encoder": r"(?:.+\.)?blocks\.\d+\.attn\.(?:qkv|proj)",
    "mask_decoder": r"transformer\.(?:.+\.)?(?:q_proj|k_proj|v_proj|out_proj)",
}
# Where the parts are in segment_anything's `Sam`; other models pass their adapter's `part_paths`.
DEFAULT_PATHS = {"image_encoder": "image_encoder", "mask_decoder": "mask_decoder"}


def part_pattern(part: str, paths: Mapping[str, str] | None = None) -> str:
    """The regex of `part`'s attention projections among the module names of the model."""
    return re.escape((paths or DEFAULT_PATHS)[part]) + r"\." + PART_LAYERS[part]
ADAPTER_NAME = "default"
_RECORD = "_samkit_lora"  # attribute of the adapted module: the LoRA settings, for the summary / state dict


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float
    parts: tuple[str, ...]
    unfreeze: tuple[str, ...]
    unfrozen: tuple[str, ...]  # the parameter names the unfreeze prefixes matched


def _names(value, name: str) -> tuple[str, ...]:
    """A string or a sequence of strings -> a tuple (a bare string is one name, not its characters)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(item, str) for item in value):
        raise bad_argument(name, "a string or a sequence of strings", value)
    return tuple(dict.fromkeys(value))  # drop repeats, keep order


def _strip_base_layer(name: str) -> str:
    """A parameter's name as it was before peft wrapped its layer (`q_proj.base_layer.weight` -> `q_proj.weight`)."""
    return name.replace(".base_layer.", ".")


def _matches_prefix(name: str, prefix: str) -> bool:
    # On whole dotted components: "mlps.1" is not a prefix of "mlps.10.weight".
    prefix = prefix.rstrip(".")
    return any(candidate == prefix or candidate.startswith(prefix + ".")
               for candidate in (name, _strip_base_layer(name)))


def _lora_layers(module: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, LoraLayer)]


def _lora_parameter_ids(module: nn.Module) -> set[int]:
    ids = set()
    for _, layer in _lora_layers(module):
        for adapters in (layer.lora_A, layer.lora_B):
            ids.update(id(parameter) for parameter in adapters.parameters())
    return ids


def add_lora(
    sam: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    parts: Sequence[str] = ("mask_decoder",),
    unfreeze: Sequence[str] = (),
    paths: Mapping[str, str] | None = None,
) -> nn.Module:
    """Inject LoRA adapters into the attention projections of `parts`, freeze everything else.

    rank: LoRA's r; alpha: its scale numerator (None = rank, so B A is added with scale 1);
    dropout: on the LoRA branch's input, in training mode; parts: "mask_decoder" and/or "image_encoder";
    unfreeze: parameter-name prefixes (whole dotted components) to train as well, e.g.
    "mask_decoder.output_hypernetworks_mlps"; each must match at least one parameter.
    paths: where each part sits in `sam` (a model adapter's `part_paths`; SAM 2's decoder is
    `sam_mask_decoder`); None = segment_anything's names.

    B starts at zero, so the adapted model computes exactly what the original did. Works in place on
    `sam` (the layers are replaced by peft's LoRA layers, the module keeps its class) and returns it.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(sam, nn.Module):
        hint = " (pass model.module)" if hasattr(sam, "module") else ""
        raise bad_argument("sam", f"a torch.nn.Module{hint}", sam)
    if _lora_layers(sam):
        raise bad_argument("sam", "a model without LoRA adapters (add_lora was already applied)",
                           type(sam).__name__)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise bad_argument("rank", "a positive integer", rank)
    rank = int(rank)
    if alpha is None:
        alpha = float(rank)
    elif (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0
          or alpha == float("inf")):
        raise bad_argument("alpha", "a positive number or None (= rank)", alpha)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise bad_argument("dropout", "a probability in [0, 1)", dropout)
    parts = _names(parts, "parts")
    known = ", ".join(repr(part) for part in PART_LAYERS)
    if not parts:
        raise bad_argument("parts", f"at least one of {known}", parts)
    for part in parts:
        if part not in PART_LAYERS:
            why = " (the prompt encoder has no attention layers)" if part == "prompt_encoder" else ""
            raise bad_argument("parts", f"a subset of {known}{why}", part)
    unfreeze = _names(unfreeze, "unfreeze")

    patterns = {part: part_pattern(part, paths) for part in parts}
    pattern = "|".join(f"(?:{patterns[part]})" for part in parts)
    for part in parts:
        if not any(isinstance(layer, nn.Linear) and re.fullmatch(patterns[part], name)
                   for name, layer in sam.named_modules()):
            raise bad_argument("parts", f"parts that have attention projections in this model (none match "
                                        f"{patterns[part]!r}; pass the adapter's part_paths as `paths`)", part)
    # Unfreeze prefixes are checked before anything is changed, so a bad call leaves `sam` as it was.
    # Names are matched with and without peft's ".base_layer" (see _matches_prefix), so checking
    # against the names before injection is the same as after.
    before = [name for name, _ in sam.named_parameters()]
    for prefix in unfreeze:
        if not prefix or not any(_matches_prefix(name, prefix) for name in before):
            raise bad_argument("unfreeze", "prefixes of parameter names of the model", prefix)

    config = LoraConfig(r=rank, lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=pattern,
                        bias="none", init_lora_weights=True)  # True: A Kaiming-uniform, B = 0
    # inject_adapter_in_model, not get_peft_model: it replaces the target layers inside `sam` and returns
    # `sam` itself, still a segment_anything `Sam`, so the kit's adapter (which holds `sam` and calls
    # `sam.image_encoder`, `sam.mask_decoder.transformer`, ... and checks `isinstance(decoder, MaskDecoder)`)
    # keeps working unchanged. get_peft_model wraps the model in a PeftModel meant for transformers models
    # (a `config`, a forward taking input_ids, save_pretrained to the hub layout): nothing here uses that,
    # and the kit would have to unwrap it to reach the submodules.
    inject_adapter_in_model(config, sam, adapter_name=ADAPTER_NAME)

    lora_ids = _lora_parameter_ids(sam)
    unfrozen = []
    for name, parameter in sam.named_parameters():
        extra = any(_matches_prefix(name, prefix) for prefix in unfreeze)
        parameter.requires_grad_(id(parameter) in lora_ids or extra)
        if extra and id(parameter) not in lora_ids:
            unfrozen.append(name)
    setattr(sam, _RECORD, LoraSettings(rank, float(alpha), float(dropout), parts, unfreeze, tuple(unfrozen)))
    return sam


def lora_settings(sam: nn.Module) -> LoraSettings | None:
    """The settings `add_lora` used on `sam`, or None when it has no LoRA."""
    return getattr(sam, _RECORD, None) if _lora_layers(sam) else None


def lora_state_dict(sam: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors `add_lora` made trainable: every LoRA A and B, and the parameters its `unfreeze`
    prefixes matched (whatever their `requires_grad` is now). Keys are `sam`'s parameter names, so
    `add_lora(fresh_sam, same settings); fresh_sam.load_state_dict(state, strict=False)` restores them.
    Values are detached and share storage with the parameters, as in `state_dict()`.
    """
    settings = lora_settings(sam)
    if settings is None:
        raise bad_argument("sam", "a model with LoRA adapters (from add_lora)", type(sam).__name__)
    lora_ids = _lora_parameter_ids(sam)
    unfrozen = set(settings.unfrozen)
    return {name: parameter.detach() for name, parameter in sam.named_parameters()
            if id(parameter) in lora_ids or name in unfrozen}


def merge_lora(sam: nn.Module) -> nn.Module:
    """Fold each LoRA update (scale * B A) into its layer's weight with peft's own `merge`, and put the
    plain `nn.Linear` back in place of peft's layer. In place; returns `sam`.

    Afterwards `sam` has its original architecture and parameter names (a normal `state_dict()`), and the
    decoder's shared-image fast path applies again. Parameters keep their `requires_grad`: the merged
    weights stay frozen, explicitly unfrozen parameters stay trainable.
    """
    layers = _lora_layers(sam)
    if not layers:
        raise bad_argument("sam", "a model with LoRA adapters (from add_lora)", type(sam).__name__)
    for name, layer in layers:
        layer.merge(safe_merge=True)  # safe_merge: fails on NaN / inf instead of writing them in
        parent_name, _, child = name.rpartition(".")
        setattr(sam.get_submodule(parent_name) if parent_name else sam, child, layer.get_base_layer())
    if hasattr(sam, _RECORD):
        delattr(sam, _RECORD)
    if hasattr(sam, "peft_config"):  # set by peft's injection
        del sam.peft_config
    return sam


def trainable_summary(module: nn.Module) -> str:
    """One line: e.g. "LoRA r=4 on mask_decoder: 12,288 trainable of 7,612,000 parameters (0.16%)"."""
    if not isinstance(module, nn.Module):
        raise bad_argument("module", "a torch.nn.Module", module)
    # Parameters shared between submodules are counted once, as parameters() yields them once.
    total = sum(parameter.numel() for parameter in module.parameters())
    trainable = sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
    settings = lora_settings(module)
    if settings is None:
        head = "no LoRA"
    else:
        head = f"LoRA r={settings.rank} on {' + '.join(settings.parts)}"
        if settings.unfreeze:
            head += f" (+ unfrozen {', '.join(settings.unfreeze)})"
    share = 100 * trainable / total if total else 0.0
    percent = f"{share:.2f}" if share == 0 or share >= 0.01 else f"{share:.2g}"
    return f"{head}: {trainable:,} trainable of {total:,} parameters ({percent}%)"


__all__ = ["LoraSettings", "add_lora", "lora_settings", "lora_state_dict", "merge_lora", "trainable_summary"]
