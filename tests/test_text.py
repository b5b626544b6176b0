"""The frozen text encoder: shape, normalisation, the per-text cache, the sha256 check, bad input."""

from __future__ import annotations

import pytest
import torch

from samkit.checkpoints import CheckpointError
from samkit.models import text
from samkit.models.text import MINILM_SHA256, TextEncoder


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder("minilm", device="cpu")


def test_shipped_weights_match_the_recorded_sha256():
    weights = text.minilm_folder() / text.MINILM_WEIGHTS
    assert text.sha256_of(weights) == MINILM_SHA256


def test_encode_gives_one_unit_vector_per_text(minilm):
    vectors = minilm.encode(["crab", "kelp", "crab"])
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32 and minilm.dim == 384
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(vectors[0], vectors[2])
    assert not vectors.requires_grad
    # Related words sit closer than unrelated ones (a sanity check of the weights, not a benchmark).
    fish, seahorse, sand = minilm.encode(["fish", "seahorse", "sand"])
    assert fish @ seahorse > fish @ sand


def test_vectors_are_cached_per_text_and_shared_between_encoders(minilm):
    first = minilm.encode(["a text only this test asks for"])
    again = TextEncoder("minilm")  # a new object of the same name shares the cache
    before = again.encoded
    second = again.encode(["a text only this test asks for"])
    assert again.encoded == before  # no model run: a cache hit
    assert torch.equal(first, second)
    mixed = again.encode(["another text only this test asks for", "a text only this test asks for"])
    assert again.encoded == before + 1 and torch.equal(mixed[1], first[0])


def test_corrupt_weights_fail_the_sha256_check(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match="sha256"):
        text.verify_sha256(fake, MINILM_SHA256)
    with pytest.raises(CheckpointError, match="missing"):
        text.verify_sha256(tmp_path / "absent.safetensors", MINILM_SHA256)
    text.verify_sha256(fake, text.sha256_of(fake))  # the right hash passes


@pytest.mark.parametrize("texts", [[], "crab", ["crab", ""], ["crab", 3]])
def test_bad_texts_are_refused(minilm, texts):
    with pytest.raises(ValueError, match="texts: expected"):
        minilm.encode(texts)


@pytest.mark.parametrize("name", ["bert", "clip:", None])
def test_unknown_encoder_names_are_refused(name):
    with pytest.raises(ValueError, match="name: expected"):
        TextEncoder(name)


def test_clip_is_not_loaded_until_asked():
    encoder = TextEncoder("clip:/nonexistent/folder")  # constructing loads nothing
    assert encoder.name == "clip:/nonexistent/folder" and not encoder.cache
