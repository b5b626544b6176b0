"""The trainer: configs, checkpoints, exact resume after SIGKILL, DDP with gloo, the frozen-encoder path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from samkit.train import fit, load_config, load_weights, trainable_weights
from samkit.methods import build_method
from samkit.train.state import capture_rng, load_checkpoint, restore_rng, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(run_dir: Path, **changes) -> dict:
    """A finetune run small enough for tests: TinySAM, 64 px scenes, 2 instances per image."""
    scenes = {"kind": "shapescenes", "size": 64, "seed": 3}
    config = {
        "method": "finetune", "run_dir": str(run_dir), "epochs": 2, "batch_size": 4, "lr": 1e-3,
        "progress": False, "tensorboard": False,
        "method_args": {
            "model": "tinysam", "trainable": "lora", "lora_rank": 2, "instances_per_image": 2, "box_jitter": 0.1,
            "train": {**scenes, "split": "train", "classes": "base", "n": 8},
            "eval_base": {**scenes, "split": "val", "classes": "base", "n": 2},
            "eval_novel": {**scenes, "split": "val", "classes": "novel", "n": 2},
        },
    }
    for key, value in changes.items():
        config[key] = value
    return config


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.safetensors").weights


def run_cli(config_path: Path, *extra: str, nproc: int = 1, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2")}
    if nproc == 1:
        command = [sys.executable, "-m", "samkit.train", str(config_path), *extra]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_port", str(29500 + os.getpid() % 1000), "-m", "samkit.train", str(config_path), *extra]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# ---- configs ---------------------------------------------------------------------------------

def test_config_files_load_and_overrides_reach_nested_keys():
    config = load_config("finetune_class", ["epochs=3", "method_args.lora_rank=8", "betas=[0.8, 0.9]"])
    assert config.epochs == 3 and config.method_args["lora_rank"] == 8 and config.betas == (0.8, 0.9)
    assert config.method_args["train"]["style"] == "ocean"
    full = load_config(ROOT / "samkit" / "configs" / "finetune_full.yaml")
    assert (full.method_args["model"], full.method_args["lora_rank"], full.lr, full.weight_decay) == \
        ("sam_vit_b", 4, 5e-3, 0.1)
    assert full.betas == (0.9, 0.999) and full.optimizer == "adam"


@pytest.mark.parametrize("name, expected", [
    ("cpcsam_full", {"optimizer": "adam", "lr": 5e-3, "weight_decay": 0.1}),  # CPC-SAM Sec. 4.1
    ("prosam_full", {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-6, "schedule": "cosine_restarts",
                     "restart_epochs": 15, "epochs": 100, "seed": 321}),  # ProSAM Sec. 5.1
    ("ssprompt_full", {"optimizer": "sgd", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "poly"}),  # Sec. 4.1
    ("openworldsam_full", {"optimizer": "adamw", "lr": 1e-4, "schedule": "step", "milestones": (0.89, 0.96)}),
])
def test_full_recipes_carry_their_papers_optimiser_settings(name, expected):
    config = load_config(name)
    assert {key: getattr(config, key) for key in expected} == expected


@pytest.mark.parametrize("source, overrides, named", [
    ("finetune_class", ["epoch=3"], "epoch"),
    ("finetune_class", ["optimizer=lion"], "optimizer"),
    ("finetune_class", ["batch_size=0"], "batch_size"),
    ("finetune_class", ["lr"], "override"),
    ("no_such_config", [], "no_such_config"),
])
def test_bad_configs_name_the_key(source, overrides, named):
    with pytest.raises(ValueError, match=named):
        load_config(source, overrides)


def test_unknown_method_argument_names_the_method(tmp_path):
    config = load_config(tiny_config(tmp_path), ["method_args.lora_rnk=3"])
    with pytest.raises(ValueError, match="method_args of 'finetune'.*lora_rnk"):
        build_method(config.method, config.method_args, torch.device("cpu"))


def test_batch_size_must_split_over_accumulation(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        fit(tiny_config(tmp_path, batch_size=3, grad_accum=2))


# ---- checkpoints -----------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_optimizer_scheduler_and_rng(tmp_path):
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, betas=(0.8, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(3):
        layer(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    rng = capture_rng()
    save_checkpoint(tmp_path / "c.safetensors", dict(layer.named_parameters()), optimizer, scheduler, rng,
                    {"epoch": 2, "history": [{"loss": 0.5}]})
    expected_draw = (torch.rand(3), np.random.rand(3))
    torch.rand(5), np.random.rand(5)  # move the generators on
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    restore_rng(loaded.rng)
    assert torch.equal(torch.rand(3), expected_draw[0]) and np.array_equal(np.random.rand(3), expected_draw[1])
    assert loaded.trainer == {"epoch": 2, "history": [{"loss": 0.5}]}
    fresh = torch.optim.Adam(layer.parameters(), lr=0.1)
    fresh.load_state_dict(loaded.optimizer)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])
    assert fresh.param_groups[0]["betas"] == (0.8, 0.9)
    assert loaded.scheduler["last_epoch"] == 3


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.safetensors"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="last.safetensors"):
        load_checkpoint(path)


# ---- the loop --------------------------------------------------------------------------------

def test_fit_records_history_checkpoints_and_skips_the_encoder_after_epoch_one(tmp_path, monkeypatch):
    calls = []
    from samkit.models.base import SamAdapter
    original_embed = SamAdapter.embed
    monkeypatch.setattr(SamAdapter, "embed", lambda self, images, grad=False: (
        calls.append(len(images) if isinstance(images, list) else 1), original_embed(self, images, grad))[1])
    config = tiny_config(tmp_path, best_metric="dice_base", epochs=3)
    history = fit(config)
    assert list(history["epoch"]) == [1, 2, 3]
    assert {"train_loss", "dice_base", "dice_novel", "lr", "seconds"} <= set(history.columns)
    assert history["dice_base"].between(0, 1).all() and (history["train_loss"] > 0).all()
    # 8 training + 2 + 2 evaluation images, each encoded once in the whole run
    assert sum(calls) == 12
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [1, 2, 3]
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert best.trainer["dice_base"] == history["dice_base"].max()
    assert set(best.weights) == set(final_weights(tmp_path)) and all("lora" in k for k in best.weights)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


# Comparisons of runs whose sums are ordered differently use SGD: Adam's first steps move every
# weight by about lr whatever the size of its gradient, so float noise in a zero gradient would
# show up as a difference of lr.
SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    fit(tiny_config(tmp_path / "one", epochs=1, eval_every=0, **SGD))
    fit(tiny_config(tmp_path / "accumulated", epochs=1, eval_every=0, grad_accum=2, **SGD))
    one, accumulated = final_weights(tmp_path / "one"), final_weights(tmp_path / "accumulated")
    for name in one:
        torch.testing.assert_close(accumulated[name], one[name], rtol=1e-5, atol=1e-6)


def test_load_weights_puts_a_checkpoint_into_a_fresh_method(tmp_path):
    config = load_config(tiny_config(tmp_path, epochs=1, eval_every=0))
    fit(config)
    method = load_weights(build_method(config.method, config.method_args, torch.device("cpu")),
                          tmp_path / "last.safetensors")
    saved = final_weights(tmp_path)
    assert all(torch.equal(value, saved[name]) for name, value in trainable_weights(method).items())


def test_resume_reads_a_finished_run_back_and_refuses_another_config(tmp_path):
    config = tiny_config(tmp_path, epochs=1, eval_every=0)
    history = fit(load_config(config))
    weights = final_weights(tmp_path)
    again = fit(load_config({**config, "progress": True}), resume=True)  # how it is watched may change
    pd.testing.assert_frame_equal(again, history)
    assert all(torch.equal(value, final_weights(tmp_path)[name]) for name, value in weights.items())  # nothing trained
    with pytest.raises(ValueError, match=r"resume: expected the config that trained .*lr"):
        fit(load_config({**config, "lr": 1e-2}), resume=True)
    extended = fit(load_config({**config, "epochs": 2}), resume=True)  # a finished run may be extended
    assert list(extended["epoch"]) == [1, 2] and extended.iloc[0].equals(history.iloc[0])


def test_resume_after_sigkill_in_mid_epoch_ends_where_an_uninterrupted_run_ends(tmp_path):
    # 3 epochs of 4 steps (16 samples, batch 4); a checkpoint every step.
    changes = dict(epochs=3, eval_every=0, checkpoint_every=1)
    config = tiny_config(tmp_path / "killed", **changes)
    config["method_args"]["train"]["n"] = 16
    reference = tiny_config(tmp_path / "straight", **changes)
    reference["method_args"]["train"]["n"] = 16
    assert run_cli(write_config(tmp_path / "straight.yaml", reference)).wait(timeout=600) == 0

    process = run_cli(write_config(tmp_path / "killed.yaml", config))
    last = tmp_path / "killed" / "last.safetensors"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once a checkpoint inside epoch 2 is on disk
        if last.exists():
            position = load_checkpoint(last).trainer
            if position["epoch"] == 1 and position["step"] >= 1:
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    position = load_checkpoint(last).trainer
    assert position["epoch"] < 3 and 0 < position["step"] < 4, position  # killed mid-epoch

    resumed = run_cli(write_config(tmp_path / "killed.yaml", config), "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming" in output
    straight, killed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert straight.keys() == killed.keys()
    for name in straight:
        assert torch.equal(killed[name], straight[name]), name
    history = pd.read_csv(tmp_path / "killed" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_series_equal(history["train_loss"],
                                   pd.read_csv(tmp_path / "straight" / "history.csv")["train_loss"])


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    changes = dict(epochs=1, eval_every=0, **SGD)
    single = run_cli(write_config(tmp_path / "one.yaml", tiny_config(tmp_path / "one", **changes)))
    output, _ = single.communicate(timeout=600)
    assert single.returncode == 0, output
    double = run_cli(write_config(tmp_path / "two.yaml", tiny_config(tmp_path / "two", **changes)), nproc=2)
    output, _ = double.communicate(timeout=600)
    assert double.returncode == 0, output
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert one.keys() == two.keys()
    assert any(float(value.abs().max()) > 0 for name, value in one.items() if "lora_B" in name)  # it trained
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


# ---- data specs ------------------------------------------------------------------------------

def test_dataset_specs_build_views_and_name_bad_entries():
    from samkit.datasets.specs import build_dataset

    scenes = build_dataset({"kind": "shapescenes", "split": "val", "classes": "all", "n": 6, "size": 64,
                            "take": [2, 5], "keep_classes": ["starfish", "crab", "pebble"]})
    assert len(scenes) == 3
    for sample in scenes:
        assert set(sample.class_names) <= {"starfish", "crab", "pebble"}
        assert len(sample.instance_masks) == len(sample.instance_classes)
    with pytest.raises(ValueError, match="train.kind"):
        build_dataset({"kind": "imagenet"}, "train")
    with pytest.raises(ValueError, match="eval_base"):
        build_dataset({"kind": "shapescenes", "splt": "val"}, "eval_base")
    with pytest.raises(ValueError, match="take"):
        build_dataset({"kind": "shapescenes", "n": 4, "take": [5, 9]})


def test_prompt_adapter_trains_only_the_adapter(tmp_path):
    config = tiny_config(tmp_path, epochs=1, eval_every=0)
    config["method_args"]["trainable"] = "prompt_adapter"
    fit(config)
    assert all(name.startswith("prompt_adapter.") for name in final_weights(tmp_path))


def test_step_schedule_divides_the_rate_by_ten_at_each_milestone():
    from samkit.train.loop import _lr_factor

    factor = _lr_factor(load_config({"method": "finetune", "schedule": "step", "milestones": [0.5, 0.75]}), 100)
    assert [factor(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    poly = _lr_factor(load_config({"method": "finetune", "schedule": "poly"}), 100)
    assert poly(0) == 1 and poly(50) == pytest.approx(0.5 ** 0.9)
    with pytest.raises(ValueError, match="milestones"):
        load_config({"method": "finetune", "schedule": "step", "milestones": [1.5]})


def test_cosine_restarts_follows_torch_sgdr_with_a_period_in_epochs():
    from samkit.train.loop import _lr_factor

    config = load_config({"method": "finetune", "schedule": "cosine_restarts", "restart_epochs": 3, "lr": 0.5})
    factor = _lr_factor(config, total_steps=10 * 4, steps_per_epoch=4)  # 10 epochs of 4 steps, T_0 = 12 steps
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sgdr = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=12)
    reference = []
    for _ in range(40):
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sgdr.step()
    assert [0.5 * factor(s) for s in range(40)] == pytest.approx(reference)
    assert factor(12) == factor(24) == 1.0 and factor(11) < 0.02  # restarts at epochs 3 and 6
    with pytest.raises(ValueError, match="restart_epochs"):
        load_config({"method": "finetune", "schedule": "cosine_restarts"})


def test_load_run_rebuilds_the_trained_method_from_its_folder(tmp_path):
    from samkit.train import load_run, run_config

    config = load_config(tiny_config(tmp_path, epochs=1, eval_every=1, best_metric="dice_base"))
    fit(config)
    assert run_config(tmp_path).method_args == config.method_args
    method = load_run(tmp_path, device="cpu")
    assert not method.training
    saved = final_weights(tmp_path)
    assert all(torch.equal(value, saved[name]) for name, value in trainable_weights(method).items())
    assert load_run(tmp_path, checkpoint="best").evaluate()["dice_base"] == pytest.approx(
        pd.read_csv(tmp_path / "history.csv")["dice_base"].max(), abs=1e-6)
    with pytest.raises(ValueError, match="^run_dir: expected a run folder"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="^checkpoint: expected"):
        load_run(tmp_path, checkpoint="epoch3")
