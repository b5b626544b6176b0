"""What a notebook's parameters cell reads from the environment (samkit.notebook)."""

from __future__ import annotations

import pytest

from samkit.notebook import parameters, runs_folder


def test_defaults_and_the_full_profiles_model(monkeypatch):
    for name in ("SAMKIT_PROFILE", "SAMKIT_SEED", "SAMKIT_MODEL", "SAMKIT_CHECKPOINT", "SAMKIT_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    run = parameters(full_model="sam_vit_h")
    assert (run.profile, run.seed, run.model, run.device, run.checkpoint) == ("class", 0, "tinysam", "auto", None)
    assert run.pick(smoke=1, class_=2, full=3) == 2
    monkeypatch.setenv("SAMKIT_PROFILE", "full")
    monkeypatch.setenv("SAMKIT_SEED", "4")
    full = parameters(full_model="sam_vit_h")
    assert (full.profile, full.seed, full.model, full.pick(1, 2, 3)) == ("full", 4, "sam_vit_h", 3)
    monkeypatch.setenv("SAMKIT_MODEL", "sam2.1_hiera_t")
    assert parameters(full_model="sam_vit_h").model == "sam2.1_hiera_t"  # the variable wins


@pytest.mark.parametrize("name, value", [("SAMKIT_PROFILE", "quick"), ("SAMKIT_SEED", "one")])
def test_bad_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        parameters()


def test_runs_folder_is_temporary_in_smoke_only():
    first, second = runs_folder("smoke"), runs_folder("smoke")
    assert first != second and first.is_dir()
    assert str(runs_folder("class")) == "runs"
    with pytest.raises(ValueError, match="^profile: expected"):
        runs_folder("tiny")


def test_figures_merge_numbers_and_clear_forgets_older_runs(tmp_path):
    import json

    from samkit.figures import Figures

    (tmp_path / "notebooks").mkdir()  # a project root: notebooks/ beside figures/
    (tmp_path / "figures").mkdir()
    figures = Figures("99_test", "class", root=tmp_path)
    figures.record(old_key=1)
    assert figures.record(new_key=2) == {"old_key": 1, "new_key": 2, "profile": "class"}  # merged
    figures.clear()
    figures.record(new_key=3)
    assert json.loads(figures.numbers_path.read_text()) == {"new_key": 3, "profile": "class"}
