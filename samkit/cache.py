"""On-disk cache of image embeddings, keyed by model, checkpoint sha256 and image sha256.

Frozen image encoders are the expensive part of SAM; methods that keep them frozen
(ProSAM, SSPrompt, OpenWorldSAM) compute each embedding once and read it back afterwards.
Entries are safetensors files written atomically; a corrupt one is recomputed, never fatal.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from samkit.atomic import atomic_path
from samkit.checkpoints import cache_dir
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
    """The disk cache for `model`, or None when its weights have no known sha256 (random weights)."""
    if not model.checkpoint_sha256:
        return None
    return EmbeddingCache(model.name, model.checkpoint_sha256, root)


__all__ = ["EmbeddingCache", "embedding_cache_for"]
