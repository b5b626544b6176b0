"""Official checkpoints: one table of URLs and sha256, a verified download, and safe loading."""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from samkit.atomic import atomic_path


@dataclass(frozen=True)
class OfficialCheckpoint:
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_SAM1 = "https://dl.fbaipublicfiles.com/segment_anything"
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"

OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "sam_vit_b": OfficialCheckpoint(f"{_SAM1}/sam_vit_b_01ec64.pth",
                                    "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "sam_vit_l": OfficialCheckpoint(f"{_SAM1}/sam_vit_l_0b3195.pth",
                                    "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "sam_vit_h": OfficialCheckpoint(f"{_SAM1}/sam_vit_h_4b8939.pth",
                                    "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    "sam2.1_hiera_t": OfficialCheckpoint(f"{_SAM2}/sam2.1_hiera_tiny.pt",
                                         "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
    "sam2.1_hiera_s": OfficialCheckpoint(f"{_SAM2}/sam2.1_hiera_small.pt",
                                         "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    "sam2.1_hiera_b+": OfficialCheckpoint(f"{_SAM2}/sam2.1_hiera_base_plus.pt",
                                          "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    "sam2.1_hiera_l": OfficialCheckpoint(f"{_SAM2}/sam2.1_hiera_large.pt",
                                         "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, corrupt, or made for another model."""


def cache_dir() -> Path:
    """`$SAMKIT_CACHE`, else the user's cache folder (`$XDG_CACHE_HOME/samkit` or `~/.cache/samkit`)."""
    if os.environ.get("SAMKIT_CACHE"):
        return Path(os.environ["SAMKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "samkit"


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file, read in blocks (nothing is written next to it)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            hasher.update(block)
    return hasher.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered beside it (keyed by size and mtime) so big files hash once."""
    path = Path(path)
    stat = path.stat()
    memo = path.with_name(f".{path.name}.sha256")
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    try:
        remembered_stamp, digest = memo.read_text().split()
        if remembered_stamp == stamp and len(digest) == 64:
            return digest
    except (OSError, ValueError):
        pass
    digest = sha256_of(path)
    try:
        with atomic_path(memo) as temp:
            temp.write_text(f"{stamp} {digest}\n")
    except OSError:  # a read-only folder: just do not remember
        pass
    return digest


def fetch_checkpoint(name: str) -> Path:
    """The local path of an official checkpoint, downloaded into `cache_dir()` on first use."""
    entry = OFFICIAL_CHECKPOINTS[name]
    target = cache_dir() / "checkpoints" / entry.filename
    if target.exists():
        if file_sha256(target) == entry.sha256:
            return target
        raise CheckpointError(
            f"{target} does not have the published sha256 of {name} ({entry.sha256}); "
            f"the file is corrupt or truncated: delete it and run again, or download {entry.url} by hand")
    try:
        with urllib.request.urlopen(entry.url, timeout=30) as response, atomic_path(target) as temp:
            total = int(response.headers.get("Content-Length") or 0) or None
            hasher = hashlib.sha256()
            with open(temp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                               desc=f"downloading {entry.filename}") as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    hasher.update(block)
                    bar.update(len(block))
            if hasher.hexdigest() != entry.sha256:
                raise CheckpointError(f"downloaded {entry.url} but its sha256 is {hasher.hexdigest()}, "
                                      f"not the published {entry.sha256}; nothing was saved")
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise CheckpointError(
            f"cannot download the {name} checkpoint ({error}). If this machine is offline, download "
            f"{entry.url} elsewhere and put it at {target} (sha256 {entry.sha256}), or pass "
            f"checkpoint='/path/to/{entry.filename}' to load_model") from None
    return target


def read_state_dict(path: str | os.PathLike, model_name: str) -> dict[str, torch.Tensor]:
    """Load a state dict without unpickling arbitrary objects (safetensors, or torch with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint for {model_name}: no file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint for {model_name} at {path} holds Python objects other than tensors; samkit "
            f"refuses to unpickle them (torch.load weights_only=True). Only load files you trust, "
            f"and convert them to a plain state dict first ({str(error).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"checkpoint for {model_name} at {path} could not be read: the file is corrupt or "
            f"truncated ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # SAM2's files wrap the weights as {"model": state_dict}
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint for {model_name} at {path} is not a state dict of tensors")
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], model_name: str, path: str | os.PathLike) -> None:
    """Load `state` into `module`, failing with the first missing and unexpected keys named."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit the {model_name} architecture: "
            f"{len(missing)} missing keys (first: {missing[0] if missing else '-'}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[0] if unexpected else '-'})")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"checkpoint {path} does not fit the {model_name} architecture: {key} has shape "
                f"{tuple(tensor.shape)} in the file but {tuple(expected[key].shape)} in the model")
    module.load_state_dict(state)
