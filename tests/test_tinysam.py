"""TinySAM: the shipped checkpoint, its integrity check, and its pre-training (a method of the trainer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import samkit
from samkit.checkpoints import CheckpointError, file_sha256
from samkit.models import tinysam
from samkit.methods import build_method
from samkit.methods.tinysam_pretrain import TinySamPretraining


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


def pretraining(**args) -> TinySamPretraining:
    torch.manual_seed(0)
    small = {"scenes_per_epoch": 4, "targets_per_scene": 2, "val_scenes": 2, "image_size": 128}
    return build_method("tinysam_pretrain", {**small, **args}, torch.device("cpu"))


def test_targets_use_only_base_and_stuff_classes_and_epochs_draw_fresh_scenes():
    method = pretraining(targets_per_scene=4)
    assert method.data.classes == "base"
    first = [method.scene(i).image for i in range(4)]
    method.epoch = 1
    assert not any(np.array_equal(a, method.scene(i).image) for i in range(4) for a in first)
    for index in range(4):
        sample = method.train_sample(index, np.random.default_rng(index))
        assert 1 <= len(sample["targets"]) <= 4 and sum(t.refine for t in sample["targets"]) >= 1
        for target in sample["targets"]:
            assert target.mask.any()
            if len(target.points):
                inside = target.mask[target.points[:, 1].astype(int), target.points[:, 0].astype(int)]
                assert inside[target.labels == 1].all()


def test_one_pretraining_step_updates_encoder_and_decoder():
    method = pretraining()
    before = {k: v.clone() for k, v in method.sam.state_dict().items()}
    batch = [method.train_sample(i, np.random.default_rng(i)) for i in range(2)]
    loss, logs = method(batch)
    assert torch.isfinite(loss) and loss > 0
    assert {"loss_refine_box", "loss_refine_points"} & set(logs)  # every scene refines at least one target
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    loss.backward()
    optimizer.step()
    after = method.sam.state_dict()
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        prefix = method.adapter.part_paths[part] + "."
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"no weight of {part} changed"
    first = next(k for k in before if k.startswith("image_encoder.") and k.endswith("weight"))
    assert not torch.equal(before[first], after[first]), f"the image encoder's first layer {first} did not train"


@pytest.mark.parametrize("architecture", tinysam.ARCHITECTURES)
def test_a_file_says_its_architecture(tmp_path, architecture):
    torch.manual_seed(0)
    model = tinysam.load("random", torch.device("cpu"), architecture)
    assert model.architecture == architecture
    path = tmp_path / "tinysam.safetensors"
    tinysam.save(model, path)
    again = samkit.load_model("tinysam", checkpoint=path, device="cpu")
    assert again.architecture == architecture and type(again) is type(model)
    other = next(a for a in tinysam.ARCHITECTURES if a != architecture)
    with pytest.raises(CheckpointError, match=f"holds TinySAM '{architecture}'"):
        tinysam.load(path, torch.device("cpu"), other)


def test_an_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="architecture: expected one of vit, hiera, conv, got 'swin'"):
        tinysam.load("random", torch.device("cpu"), "swin")
    with pytest.raises(ValueError, match="architecture"):
        build_method("tinysam_pretrain", {"model": "sam_vit_b", "architecture": "hiera"}, torch.device("cpu"))


def test_train_command_writes_a_checkpoint_that_loads(tmp_path, capsys):
    out = tmp_path / "tinysam.safetensors"
    tinysam.main(["train", f"run_dir={tmp_path / 'run'}", "epochs=1", "eval_every=1", "progress=false",
                  "batch_size=2", "warmup_steps=1", "method_args.scenes_per_epoch=2", "method_args.val_scenes=2",
                  "method_args.targets_per_scene=1", "--out", str(out), "--eval-scenes", "2"])
    assert (tmp_path / "tinysam.safetensors.sha256").read_text().split()[0] == file_sha256(out)
    report = (tmp_path / "tinysam_report.json").read_text()
    assert '"box_miou_base"' in report and '"history"' in report
    trained = samkit.load_model("tinysam", checkpoint=out, device="cpu")
    assert trained.checkpoint_sha256 == file_sha256(out)
    # The file is the model that trained, buffers included (the prompt encoder's random positional
    # matrix is drawn at build time, not stored in the run's checkpoints): it scores what the
    # run's last evaluation scored, on the same validation scenes, whatever the caller's RNG.
    torch.manual_seed(123)
    last_row = json.loads(report)["history"][-1]
    again = tinysam.evaluate(trained, n=2, split="val", classes=("base",))
    assert again["box_miou_base"] == pytest.approx(last_row["box_miou_base"], abs=1e-4)
    assert again["click_miou_base"] == pytest.approx(last_row["click_miou_base"], abs=1e-4)


def test_the_wheel_ships_the_checkpoint(tmp_path):
    """`pip install .` (not editable) must carry TinySAM's weights: they are package data."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repository = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(repository)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("samkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("samkit/weights/tinysam.safetensors")
        digest = archive.read("samkit/weights/tinysam.safetensors.sha256").decode().split()[0]
    assert shipped == tinysam.CHECKPOINT.read_bytes() and digest == file_sha256(tinysam.CHECKPOINT)
    assert tinysam.CHECKPOINT.parent.parent == Path(samkit.__file__).parent  # found through the package
