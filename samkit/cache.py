"""On-disk cache of image embeddings, keyed by model, checkpoint sha256 and image sha256.

Frozen image encoders are the expensive part of SAM; methods that keep them frozen
(ProSAM, SSPrompt, OpenWorldSAM) compute each embedding once and read it back afterwards.
Entries are safetensors files written atomically; a corrupt one is recomputed, never fatal.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from samkit.atomic import atomic_path
from samkit.checkpoints import cache_dir
from samkit.images import ImageLike, as_rgb_uint8, image_sha256
from samkit.lru import LruCache
from samkit.models.base import ImageEmbedding


class EmbeddingCache:
    """Image embeddings of one model (name + checkpoint sha256) on disk.

    `root` defaults to `$SAMKIT_CACHE/embeddings`. Two processes may write the same key:
    each writes its own temporary file and renames it into place, so readers always see a
    complete entry.
    """

    def __init__(self, model_name: str, checkpoint_sha256: str, root: str | os.PathLike | None = None):
        self.model_name = model_name
        self.checkpoint_sha256 = checkpoint_sha256
        safe_name = "".join(c if c.isalnum() or c in "._-+" else "_" for c in model_name)
        self.folder = Path(root or cache_dir() / "embeddings") / safe_name / checkpoint_sha256[:16]
        self.hits = 0
        self.misses = 0

    def path(self, image_sha256: str) -> Path:
        return self.folder / image_sha256[:2] / f"{image_sha256}.safetensors"

    def get(self, image_sha256: str) -> ImageEmbedding | None:
        """The cached embedding, or None if absent or unreadable (a warning says which)."""
        path = self.path(image_sha256)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as entry:
                meta = entry.metadata()
                tensors = {key: entry.get_tensor(key) for key in entry.keys()}
            levels = int(meta["high_res_levels"])
            embedding = ImageEmbedding(
                image_embed=tensors["image_embed"],
                original_sizes=[tuple(json.loads(meta["original_size"]))],
                input_sizes=[tuple(json.loads(meta["input_size"]))],
                high_res_feats=[tensors[f"high_res_{level}"] for level in range(levels)],
            )
            if meta.get("checkpoint_sha256") != self.checkpoint_sha256:
                raise ValueError("entry belongs to other weights")
        except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as error:
            warnings.warn(f"embedding cache entry {path} is unreadable ({error}); recomputing it", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return embedding

    def put(self, image_sha256: str, embedding: ImageEmbedding) -> None:
        """Store a single-image embedding atomically."""
        if len(embedding) != 1:
            raise ValueError(f"embedding: expected one image, got {len(embedding)}")
        tensors = {"image_embed": embedding.image_embed.detach().cpu().contiguous()}
        for level, feat in enumerate(embedding.high_res_feats):
            tensors[f"high_res_{level}"] = feat.detach().cpu().contiguous()
        meta = {
            "model": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "original_size": json.dumps(list(embedding.original_sizes[0])),
            "input_size": json.dumps(list(embedding.input_sizes[0])),
            "high_res_levels": str(len(embedding.high_res_feats)),
        }
        with atomic_path(self.path(image_sha256)) as temp:
            save_file(tensors, str(temp), metadata=meta)


def embedding_cache_for(model, root: str | os.PathLike | None = None) -> EmbeddingCache | None:
    """The disk cache for `model`, or None when its weights have no known sha256 (random weights).

    An image encoder carrying LoRA adapters no longer computes what its checkpoint computes,
    so it gets no disk cache either (entries are keyed by the checkpoint's sha256).
    """
    adapted = any("lora_" in name for name, _ in model.image_encoder.named_parameters())
    if not model.checkpoint_sha256 or adapted:
        return None
    return EmbeddingCache(model.name, model.checkpoint_sha256, root)


class CachedEncoder:
    """A frozen image encoder that runs once per distinct image: memory first, then disk.

    `disk_cache=True` uses the model's disk cache when its weights are known (a sha256);
    pass an `EmbeddingCache` to choose the folder, or False for memory only.
    `encoder_calls` counts the images the encoder actually ran on.
    """

    def __init__(self, model, disk_cache: bool | EmbeddingCache = True, memory_items: int = 64):
        self.model = model
        self.disk_cache = (disk_cache if isinstance(disk_cache, EmbeddingCache)
                           else embedding_cache_for(model) if disk_cache else None)
        self.memory = LruCache(memory_items)  # image sha256 -> ImageEmbedding
        self.encoder_calls = 0

    def _lookup(self, key: str) -> ImageEmbedding | None:
        embedding = self.memory.get(key)
        if embedding is None and self.disk_cache is not None:
            embedding = self.disk_cache.get(key)
            if embedding is not None:
                embedding = embedding.to(self.model.device)
                self.memory.put(key, embedding)
        return embedding

    def embed(self, images: ImageLike | Sequence[ImageLike]) -> tuple[ImageEmbedding, list[str]]:
        """Embeddings of one image or a list (one batch) and each image's sha256.

        Images not cached yet are encoded together in one encoder call.
        """
        single = not isinstance(images, (list, tuple))
        canonical = [as_rgb_uint8(image, "image" if single else f"images[{i}]")
                     for i, image in enumerate([images] if single else images)]
        keys = [image_sha256(image) for image in canonical]
        found = {key: self._lookup(key) for key in set(keys)}
        missing = [key for key in dict.fromkeys(keys) if found[key] is None]
        if missing:
            first_of = {key: keys.index(key) for key in missing}
            encoded = self.model.embed([canonical[first_of[key]] for key in missing])
            self.encoder_calls += len(missing)
            for row, key in enumerate(missing):
                found[key] = encoded.select(row)
                self.memory.put(key, found[key])
                if self.disk_cache is not None:
                    self.disk_cache.put(key, found[key])
        return ImageEmbedding.cat([found[key] for key in keys]), keys


__all__ = ["CachedEncoder", "EmbeddingCache", "embedding_cache_for"]
