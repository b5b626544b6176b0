"""TinySAM: the shipped checkpoint, its integrity check, and the pre-training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samkit
from samkit.checkpoints import CheckpointError
from samkit.models import tinysam
from samkit.models.tinysam_train import PretrainConfig, Pretrainer, sample_targets


def test_shipped_checkpoint_loads_and_matches_its_sha256():
    model = samkit.load_model("tinysam", device="cpu")
    assert model.checkpoint_sha256 == tinysam.CHECKPOINT_SHA.read_text().split()[0]
    assert 6e6 < sum(p.numel() for p in model.module.parameters()) < 10e6
    assert model.image_size == 256


def test_tampered_checkpoint_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "tinysam.safetensors"
    data = bytearray(tinysam.CHECKPOINT.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(tinysam, "CHECKPOINT", copy)
    monkeypatch.setattr(tinysam, "CHECKPOINT_SHA", tinysam.CHECKPOINT_SHA)
    with pytest.raises(CheckpointError, match="corrupt or was changed"):
        samkit.load_model("tinysam", device="cpu")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    model = samkit.load_model("tinysam", checkpoint="random", device="cpu")
    path = tmp_path / "copy.safetensors"
    digest = tinysam.save(model, path)
    assert (tmp_path / "copy.safetensors.sha256").read_text().startswith(digest)
    again = samkit.load_model("tinysam", checkpoint=path, device="cpu")
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(again.module.state_dict()[key], value)


def test_targets_use_only_base_and_stuff_classes():
    config = PretrainConfig(steps=1, scenes_per_step=4)
    trainer_data = Pretrainer(samkit.load_model("tinysam", checkpoint="random", device="cpu"), config).data
    assert trainer_data.classes == "base"
    scenes = [trainer_data[i] for i in range(4)]
    targets = sample_targets(scenes, config, np.random.default_rng(0))
    assert 1 <= len(targets) <= 4 * config.targets_per_scene
    for target in targets:
        assert target.mask.any()
        if len(target.points):
            inside = target.mask[target.points[:, 1].astype(int), target.points[:, 0].astype(int)]
            assert inside[target.labels == 1].all()


def test_one_pretraining_step_updates_encoder_and_decoder():
    torch.manual_seed(0)
    model = samkit.load_model("tinysam", checkpoint="random", device="cpu")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    trainer = Pretrainer(model, PretrainConfig(steps=2, scenes_per_step=2, targets_per_scene=2))
    logs = trainer.step(0, np.random.default_rng(0))
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0
    after = model.module.state_dict()
    for part in ("image_encoder.blocks.0.attn.qkv.weight", "mask_decoder.iou_token.weight",
                 "prompt_encoder.point_embeddings.1.weight"):
        assert not torch.equal(before[part], after[part]), f"{part} did not change"
