"""Checkpoint loading: safe, verified, and with clear errors for files that do not fit."""

from __future__ import annotations

import pickle

import pytest
import torch

import samkit
from samkit.checkpoints import OFFICIAL_CHECKPOINTS, CheckpointError, fetch_checkpoint, file_sha256
from samkit.models.tinysam_arch import build_tinysam


@pytest.fixture(scope="module")
def tinysam_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tinysam.pth"
    torch.manual_seed(1)
    torch.save(build_tinysam().state_dict(), path)
    return path


def test_loads_a_pth_state_dict(tinysam_pth):
    model = samkit.load_model("tinysam", checkpoint=tinysam_pth, device="cpu")
    expected = torch.load(tinysam_pth, weights_only=True)
    torch.testing.assert_close(model.module.state_dict()["mask_decoder.iou_token.weight"],
                               expected["mask_decoder.iou_token.weight"])
    assert model.checkpoint_sha256 == file_sha256(tinysam_pth)


def test_truncated_file_is_a_clear_error(tinysam_pth, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(tinysam_pth.read_bytes()[: 100_000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        samkit.load_model("tinysam", checkpoint=broken, device="cpu")


def test_keys_that_do_not_fit_name_the_model_and_keys(tinysam_pth, tmp_path):
    state = torch.load(tinysam_pth, weights_only=True)
    state["extra.weight"] = state.pop("mask_decoder.iou_token.weight")
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError) as error:
        samkit.load_model("tinysam", checkpoint=wrong, device="cpu")
    message = str(error.value)
    assert "tinysam architecture" in message
    assert "first: mask_decoder.iou_token.weight" in message and "first: extra.weight" in message


def test_a_checkpoint_of_another_architecture(official_checkpoints):
    """The SAM ViT-B file loaded as SAM 2.1: named model, missing and unexpected keys."""
    with pytest.raises(CheckpointError, match="does not fit the sam2.1_hiera_t architecture"):
        samkit.load_model("sam2.1_hiera_t", checkpoint=official_checkpoints["sam_vit_b"], device="cpu")


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True: a file with arbitrary Python objects is never unpickled."""
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        samkit.load_model("tinysam", checkpoint=evil, device="cpu")


def test_offline_download_says_where_to_put_the_file(monkeypatch, tmp_path):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as error:
        fetch_checkpoint("sam_vit_b")
    message = str(error.value)
    expected_path = tmp_path.parent  # SAMKIT_CACHE is a private folder in tests
    assert OFFICIAL_CHECKPOINTS["sam_vit_b"].url in message
    assert "checkpoints/sam_vit_b_01ec64.pth" in message and "ec2df627" in message
    assert not list((expected_path).glob("**/*.tmp"))


def test_download_is_verified_and_atomic(monkeypatch):
    """A served file is saved only when its sha256 matches the table; nothing half-written stays."""
    import io
    import urllib.request

    from samkit import checkpoints

    payload = b"not the real weights"

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Response(payload))
    with pytest.raises(CheckpointError, match="not the published"):
        fetch_checkpoint("sam_vit_b")
    target = checkpoints.cache_dir() / "checkpoints"
    assert not any(target.glob("*")) if target.exists() else True

    import hashlib

    good = checkpoints.OfficialCheckpoint(OFFICIAL_CHECKPOINTS["sam_vit_b"].url, hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(checkpoints.OFFICIAL_CHECKPOINTS, "sam_vit_b", good)
    path = fetch_checkpoint("sam_vit_b")
    assert path.read_bytes() == payload
    assert fetch_checkpoint("sam_vit_b") == path  # second call: no download, hash matches
