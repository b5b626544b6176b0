"""The on-disk embedding cache: keyed by weights and image, atomic, robust to corrupt entries."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

import samkit
from samkit.cache import EmbeddingCache
from samkit.datasets import ShapeScenes


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from samkit.models.tinysam_arch import build_tinysam

    path = tmp_path_factory.mktemp("weights") / "tinysam.pth"
    torch.manual_seed(2)
    torch.save(build_tinysam().state_dict(), path)
    return samkit.load_model("tinysam", checkpoint=path, device="cpu")


def images(n=2):
    return [scene.image for scene in ShapeScenes("test", n=n, seed=5)]


def test_second_predictor_reads_from_disk(model):
    image = images(1)[0]
    first = samkit.Predictor(model).set_image(image)
    second = samkit.Predictor(model).set_image(image)  # a new process would see the same files
    assert first.encoder_calls == 1 and second.encoder_calls == 0
    torch.testing.assert_close(first.embedding.image_embed, second.embedding.image_embed)
    assert second.disk_cache.hits == 1


def test_corrupt_entry_is_recomputed_with_a_warning(model):
    image = images(1)[0]
    predictor = samkit.Predictor(model).set_image(image)
    path = predictor.disk_cache.path(predictor.image_sha256)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    fresh = samkit.Predictor(model)
    with pytest.warns(UserWarning, match="unreadable"):
        fresh.set_image(image)
    assert fresh.encoder_calls == 1
    torch.testing.assert_close(fresh.embedding.image_embed, predictor.embedding.image_embed)
    assert samkit.Predictor(model).set_image(image).encoder_calls == 0  # rewritten whole


def test_keys_depend_on_weights_and_image(model, tmp_path):
    a = EmbeddingCache("tinysam", "a" * 64, tmp_path)
    b = EmbeddingCache("tinysam", "b" * 64, tmp_path)
    embedding = model.embed(images(1)[0])
    a.put("f" * 64, embedding)
    assert a.get("f" * 64) is not None
    assert b.get("f" * 64) is None and a.get("e" * 64) is None


def test_random_weights_are_never_cached_on_disk():
    model = samkit.load_model("tinysam", checkpoint="random", device="cpu")
    assert samkit.Predictor(model).disk_cache is None


def _write_many(folder, seed):
    model = samkit.load_model("tinysam", checkpoint="random", device="cpu")
    cache = EmbeddingCache("tinysam", "c" * 64, folder)
    embedding = model.embed(images(1)[0])
    for _ in range(20):
        cache.put("d" * 64, embedding)


def test_two_processes_writing_the_same_key(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(tmp_path, seed)) for seed in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    cache = EmbeddingCache("tinysam", "c" * 64, tmp_path)
    assert cache.get("d" * 64) is not None  # a complete entry, whichever write won
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_image_encoder_with_lora_gets_no_disk_cache(tmp_path, monkeypatch):
    from samkit.lora import add_lora

    monkeypatch.setenv("SAMKIT_CACHE", str(tmp_path))
    model = samkit.load_model("tinysam", device="cpu")
    assert samkit.Predictor(model).disk_cache is not None
    add_lora(model.module, rank=2, parts=("mask_decoder",))
    assert samkit.Predictor(model).disk_cache is not None  # the encoder still computes its checkpoint's embeddings
    model = samkit.load_model("tinysam", device="cpu")
    add_lora(model.module, rank=2, parts=("image_encoder",))
    assert samkit.Predictor(model).disk_cache is None
