"""LoRA through peft (`samkit.lora`) on TinySAM, used through the kit's seam embed -> prompt_tokens -> decode.

Every test adapts its own deep copy of conftest's session model `tinysam_random`, which stays untouched
(it serves, read only, as the plain reference).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

import samkit.models.sam1 as sam1
from samkit.lora import add_lora, lora_settings, lora_state_dict, merge_lora, trainable_summary
from samkit.models.shared_image_decoder import decode_shared_image, use_shared_image

DECODER_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "out_proj"}
ENCODER_PROJECTIONS = {"qkv", "proj"}
HYPER = "mask_decoder.output_hypernetworks_mlps"
CLICKS = 4  # prompt sets on one image: enough for the shared-image fast path on a plain TinySAM


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: one intra-op thread is as fast, and on a shared 2-core machine it avoids
    the oversubscription that made this file 5x slower with 2 threads while another job ran."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def plain(tinysam_random):
    return tinysam_random  # read only: the reference


@pytest.fixture
def adapted(tinysam_random):
    """A copy to be adapted by the test (same weights as `plain`)."""
    return copy.deepcopy(tinysam_random)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts decoder calls that take the shared-image fast path."""
    calls = []
    original = sam1.decode_shared_image

    def counted(*args, **kwargs):
        calls.append(args[4].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(sam1, "decode_shared_image", counted)
    return calls


def clicks(model, batch: int, seed: int = 0):
    """`batch` prompt sets of one positive and one negative click each, in the model's input frame."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, model.image_size - 1, (batch, 2, 2))
    return model.prompt_tokens(points, np.tile([1, 0], (batch, 1)))


def run_seam(model, image, batch: int, grad: bool = False):
    """embed -> prompt_tokens -> decode: (low-res logits, iou, image embedding)."""
    embedding = model.embed(image, grad=grad)
    sparse, dense = clicks(model, batch)
    logits, iou = model.decode(embedding, sparse, dense)
    return logits, iou, embedding.image_embed


def lora_layers(module: nn.Module) -> dict[str, LoraLayer]:
    return {name: layer for name, layer in module.named_modules() if isinstance(layer, LoraLayer)}


def randomise_lora_b(module: nn.Module, scale: float = 0.2, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(module).values():
            weight = layer.lora_B["default"].weight
            weight.copy_(scale * torch.randn(weight.shape, generator=generator))


def official_decode(sam, image_embed, sparse, dense):
    """segment_anything's own MaskDecoder.forward, which calls every projection as a module."""
    return sam.mask_decoder(image_embeddings=image_embed, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=True)


# ---- (2) B = 0 at initialisation: the adapted model computes exactly what the original did -------------

@pytest.mark.parametrize("batch", [1, CLICKS])
def test_outputs_unchanged_at_initialisation(plain, adapted, image, batch):
    add_lora(adapted.module, rank=4, parts=("image_encoder", "mask_decoder"))
    with torch.no_grad():
        embedding = plain.embed(image)
        adapted_embedding = adapted.embed(image)
        sparse, dense = clicks(plain, batch)
        adapted_sparse, adapted_dense = clicks(adapted, batch)
        # The LoRA decoder takes the general path, so it is compared with the plain model's general path
        # (bitwise), and with its fast path up to rounding (which is all the two paths ever agree to).
        reference = plain.run_decoder_general(embedding, sparse, dense.expand(batch, -1, -1, -1), True)
        logits, iou = adapted.decode(adapted_embedding, adapted_sparse, adapted_dense)
        fast = plain.decode(embedding, sparse, dense)
    assert torch.equal(adapted_embedding.image_embed, embedding.image_embed)
    assert torch.equal(adapted_sparse, sparse) and torch.equal(adapted_dense, dense)
    assert torch.equal(logits, reference[0]) and torch.equal(iou, reference[1])
    torch.testing.assert_close(logits, fast[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, fast[1], atol=1e-5, rtol=0)


# ---- (1) one optimiser step moves only what add_lora made trainable -------------------------------------

def test_optimiser_steps_change_only_lora_and_unfrozen(adapted, image):
    sam = add_lora(adapted.module, rank=4, parts=("mask_decoder", "image_encoder"), unfreeze=(f"{HYPER}.1",))
    before = {name: parameter.detach().clone() for name, parameter in sam.named_parameters()}
    buffers = {name: buffer.clone() for name, buffer in sam.named_buffers()}
    trainable = {name for name, parameter in sam.named_parameters() if parameter.requires_grad}
    lora_names = {name for name in before if ".lora_A." in name or ".lora_B." in name}
    # (mlps.1: a multimask candidate's hypernetwork; mlps.0 makes the single mask, unused by this loss)
    unfrozen = {name for name in before if name.startswith(f"{HYPER}.1.")}
    assert lora_names and unfrozen and trainable == lora_names | unfrozen

    # Adam gets *every* parameter: the freezing alone must keep the rest still. Two steps, because at the
    # first one B = 0 gives A a zero gradient (so A only moves from the second step on).
    optimizer = torch.optim.Adam(sam.parameters(), lr=1e-3)
    adapted.module.train()
    for _ in range(2):
        optimizer.zero_grad()
        logits, iou, _ = run_seam(adapted, image, CLICKS, grad=True)  # grad=True: encoder LoRA trains too
        loss = logits.sigmoid().mean() + iou.square().mean()
        loss.backward()
        optimizer.step()
    adapted.module.eval()

    for name, parameter in sam.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, before[name]), f"{name} did not train"
        else:
            assert parameter.grad is None, name
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"
    # Buffers too (pixel mean / std, positional encodings).
    assert buffers and all(torch.equal(buffer, buffers[name]) for name, buffer in sam.named_buffers())


# ---- (3) rank, alpha, which layers ------------------------------------------------------------------------

def test_rank_alpha_dropout_are_honoured(adapted):
    sam = add_lora(adapted.module, rank=np.int64(3), alpha=6, dropout=0.1, parts=("mask_decoder", "image_encoder"))
    layers = lora_layers(sam)
    # TinySAM: 6 ViT blocks x (qkv, proj); 2 two-way blocks x 3 attentions x 4 + the final attention's 4.
    assert len(layers) == 6 * 2 + (2 * 3 + 1) * 4
    for name, layer in layers.items():
        base = layer.get_base_layer()
        assert type(base) is nn.Linear
        assert layer.lora_A["default"].weight.shape == (3, base.in_features), name
        assert layer.lora_B["default"].weight.shape == (base.out_features, 3), name
        assert layer.scaling["default"] == pytest.approx(2.0)
        assert isinstance(layer.lora_dropout["default"], nn.Dropout) and layer.lora_dropout["default"].p == 0.1
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
        assert torch.count_nonzero(layer.lora_A["default"].weight) > 0
    assert lora_settings(sam).rank == 3


def test_image_encoder_only(adapted, image, fast_calls):
    sam = add_lora(adapted.module, rank=2, parts="image_encoder")
    layers = lora_layers(sam)
    assert layers and all(re.fullmatch(r"image_encoder\.blocks\.\d+\.attn\.(qkv|proj)", name) for name in layers)
    assert {name.rsplit(".", 1)[1] for name in layers} == ENCODER_PROJECTIONS
    assert type(sam.image_encoder.patch_embed.proj) is nn.Conv2d  # the patch embedding "proj" is not a target
    assert all(type(module) is nn.Linear for name, module in sam.mask_decoder.named_modules()
               if name.rsplit(".", 1)[-1] in DECODER_PROJECTIONS)
    assert all(not p.requires_grad for p in sam.mask_decoder.parameters())
    assert all(not p.requires_grad for p in sam.prompt_encoder.parameters())
    # The untouched decoder keeps the shared-image fast path.
    with torch.no_grad():
        run_seam(adapted, image, CLICKS)
    assert fast_calls == [CLICKS]


def test_mask_decoder_only_is_the_default(adapted):
    sam = add_lora(adapted.module)
    layers = lora_layers(sam)
    assert {name.rsplit(".", 1)[1] for name in layers} == DECODER_PROJECTIONS
    assert all(name.startswith("mask_decoder.transformer.") for name in layers)
    assert len(layers) == (2 * 3 + 1) * 4
    assert lora_settings(sam).alpha == 4.0  # alpha=None: alpha = rank, scale 1


# ---- (5) bad arguments: ValueError naming the argument, and the model left as it was -------------------

@pytest.mark.parametrize("kwargs, argument", [
    ({"rank": 0}, "rank"),
    ({"rank": -2}, "rank"),
    ({"rank": 2.5}, "rank"),
    ({"rank": True}, "rank"),
    ({"rank": "4"}, "rank"),
    ({"alpha": 0}, "alpha"),
    ({"alpha": -1.0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"parts": ()}, "parts"),
    ({"parts": ("prompt_encoder",)}, "parts"),
    ({"parts": ("mask_decoder", "decoder")}, "parts"),
    ({"parts": [1]}, "parts"),
    ({"unfreeze": ("mask_decoder.no_such_head",)}, "unfreeze"),
    ({"unfreeze": (f"{HYPER}.1", "mask_decoder.iou_predict")}, "unfreeze"),  # not on a dotted boundary
    ({"unfreeze": ("",)}, "unfreeze"),
])
def test_bad_arguments(tinysam_random, kwargs, argument):
    sam = copy.deepcopy(tinysam_random.module)
    with pytest.raises(ValueError, match=rf"^{argument}: expected") as raised:
        add_lora(sam, **kwargs)
    if argument == "unfreeze":
        assert repr(kwargs["unfreeze"][-1]) in str(raised.value)  # names the prefix that matched nothing
    if kwargs.get("parts") == ("prompt_encoder",):
        assert "no attention" in str(raised.value)
    assert not lora_layers(sam) and all(p.requires_grad for p in sam.parameters())


def test_bad_model(tinysam_random, adapted):
    with pytest.raises(ValueError, match=r"^sam: expected a torch.nn.Module \(pass model.module\)"):
        add_lora(tinysam_random)  # the kit's adapter, not its module
    with pytest.raises(ValueError, match=r"^parts: expected"):
        add_lora(nn.Sequential(nn.Linear(2, 2)))
    add_lora(adapted.module)
    with pytest.raises(ValueError, match=r"^sam: expected a model without LoRA"):
        add_lora(adapted.module)
    with pytest.raises(ValueError, match=r"^sam: expected a model with LoRA"):
        lora_state_dict(tinysam_random.module)


# ---- (6) the LoRA layers are really used on the kit's decoder paths ---------------------------------------

@pytest.mark.parametrize("batch", [1, CLICKS])
def test_lora_is_used_by_the_seam(plain, adapted, image, fast_calls, batch):
    add_lora(adapted.module, rank=4, parts=("mask_decoder", "image_encoder"))
    randomise_lora_b(adapted.module)
    with torch.no_grad():
        plain_logits, plain_iou, plain_embed = run_seam(plain, image, batch)
        assert fast_calls == ([CLICKS] if batch == CLICKS else [])
        logits, iou, image_embed = run_seam(adapted, image, batch)
        sparse, dense = clicks(adapted, batch)
        official_logits, official_iou = official_decode(adapted.module, image_embed, sparse, dense)
        plain_embedding = plain.embed(image)  # both decoders on the plain encoder's embedding
        plain_decoder = plain.decode(plain_embedding, sparse, dense)[0]
        fast_calls.clear()  # from here on, only the adapted model decodes
        decoder_only = adapted.decode(plain_embedding, sparse, dense)[0]
    # Non-zero B changes the encoder's output and, on the same image embedding, the decoder's output.
    assert (image_embed - plain_embed).abs().max() > 1e-2
    assert (decoder_only - plain_decoder).abs().max() > 1e-2
    assert (logits - plain_logits).abs().max() > 1e-2 and (iou - plain_iou).abs().max() > 1e-3
    # And the kit's decode equals segment_anything's own module-by-module forward with LoRA active.
    torch.testing.assert_close(logits, official_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(iou, official_iou, atol=1e-5, rtol=0)
    # With LoRA in the decoder, several clicks on one image never take the fast path (the plain model did).
    assert fast_calls == []


def test_fast_path_would_bypass_lora_so_it_is_refused(adapted, image):
    """The shared-image fast path reads k_proj / v_proj / q_proj / out_proj `.weight` directly; on a peft layer
    that is the base weight alone, so forced onto a LoRA decoder it silently drops the LoRA update. This is why
    `use_shared_image` refuses any wrapped projection."""
    sam = add_lora(adapted.module, rank=4)
    randomise_lora_b(sam)
    with torch.no_grad():
        embedding = adapted.embed(image)
        sparse, dense = clicks(adapted, CLICKS)
        assert not use_shared_image(sam.mask_decoder, embedding.image_embed, sparse, dense)
        official = official_decode(sam, embedding.image_embed, sparse, dense)[0]
        forced = decode_shared_image(sam.mask_decoder, embedding.image_embed, sam.prompt_encoder.get_dense_pe(),
                                     dense, sparse, multimask=True)[0]
        kit = adapted.decode(embedding, sparse, dense)[0]
    assert (forced - official).abs().max() > 1e-2
    torch.testing.assert_close(kit, official, atol=1e-5, rtol=0)


# ---- state dict, merge, summary --------------------------------------------------------------------------

def test_lora_state_dict_round_trip(tinysam_random, adapted, image):
    sam = add_lora(adapted.module, rank=2, unfreeze=(HYPER,))
    randomise_lora_b(sam)
    with torch.no_grad():
        for parameter in sam.mask_decoder.output_hypernetworks_mlps.parameters():
            parameter.add_(0.1)
    state = lora_state_dict(sam)
    trainable = {name for name, parameter in sam.named_parameters() if parameter.requires_grad}
    assert set(state) == trainable
    assert any(name.startswith(f"{HYPER}.") for name in state)
    assert all(".lora_" in name or name.startswith(f"{HYPER}.") for name in state)

    fresh = copy.deepcopy(tinysam_random)
    add_lora(fresh.module, rank=2, unfreeze=(HYPER,))
    missing, unexpected = fresh.module.load_state_dict(state, strict=False)
    assert not unexpected and set(missing).isdisjoint(state)
    with torch.no_grad():
        assert torch.equal(run_seam(fresh, image, 2)[0], run_seam(adapted, image, 2)[0])


def test_merge_lora(adapted, image, fast_calls):
    keys = list(adapted.module.state_dict())
    sam = add_lora(adapted.module, rank=4, parts=("mask_decoder", "image_encoder"))
    randomise_lora_b(sam, scale=0.05)
    with torch.no_grad():
        before = run_seam(adapted, image, CLICKS)
        merge_lora(sam)
        after = run_seam(adapted, image, CLICKS)
    assert not lora_layers(sam) and lora_settings(sam) is None
    assert list(sam.state_dict()) == keys  # the original architecture and parameter names
    assert fast_calls == [CLICKS]  # plain nn.Linear again: the fast path is back
    for expected, actual in zip(before, after):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_trainable_summary(adapted):
    assert trainable_summary(adapted.module).startswith("no LoRA: ")
    sam = add_lora(adapted.module, rank=4)
    total = sum(p.numel() for p in sam.parameters())
    lora = sum(p.numel() for n, p in sam.named_parameters() if ".lora_" in n)
    # Decoder: 28 projections, each r * (in + out); cross-attentions project 256 <-> 128.
    assert lora == 4 * sum(layer.in_features + layer.out_features
                           for layer in (lr.get_base_layer() for lr in lora_layers(sam).values()))
    assert trainable_summary(sam) == (f"LoRA r=4 on mask_decoder: {lora:,} trainable of {total:,} parameters "
                                      f"({100 * lora / total:.2f}%)")


def test_trainable_summary_with_unfrozen(adapted):
    sam = add_lora(adapted.module, rank=2, parts=("image_encoder", "mask_decoder"), unfreeze=(HYPER,))
    trainable = sum(p.numel() for p in sam.parameters() if p.requires_grad)
    assert re.fullmatch(rf"LoRA r=2 on image_encoder \+ mask_decoder \(\+ unfrozen {re.escape(HYPER)}\): "
                        rf"{trainable:,} trainable of [\d,]+ parameters \(\d+\.\d\d%\)", trainable_summary(sam))
