"""Where notebooks put what they reproduce: `figures/<stem>*.png` and `figures/<stem>.json`.

`figures/` is the project's: the first folder from the working directory up that holds both
`notebooks/` and `figures/` (the repository, when a notebook runs from `notebooks/`), else the
working directory. The `smoke` profile (the tests) writes to `build/figures-smoke/` there instead,
so a test run never overwrites the figures made in the `class` or `full` profile.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from samkit.atomic import atomic_path, write_bytes_atomic
from samkit.notebook import check_profile


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder whose `figures/` a notebook running in `start` (default: the working directory) writes."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "figures").is_dir():
            return folder
    return here


class Figures:
    """Figures and numbers of one notebook (`stem`, e.g. "00_sam_tour") in one run profile."""

    def __init__(self, stem: str, profile: str, root: str | os.PathLike | None = None):
        check_profile(profile)
        self.stem, self.profile = stem, profile
        self.folder = project_root(root) / ("build/figures-smoke" if profile == "smoke" else "figures")
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, figure, name: str) -> Path:
        """Save a matplotlib figure as `<stem>_<name>.png`."""
        path = self.folder / f"{self.stem}_{name}.png"
        with atomic_path(path) as temp:
            figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")
        return path

    @property
    def numbers_path(self) -> Path:
        return self.folder / f"{self.stem}.json"

    def clear(self) -> None:
        """Forget the numbers of earlier runs: a notebook calls this once, before its first `record`,
        so that no key of an older version of the notebook survives with a stale value."""
        self.numbers_path.unlink(missing_ok=True)

    def record(self, **numbers) -> dict:
        """Merge `numbers` into `<stem>.json` (with the profile that produced them); return all."""
        path = self.numbers_path
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(numbers)
        current["profile"] = self.profile
        write_bytes_atomic(path, (json.dumps(current, indent=2, sort_keys=True) + "\n").encode())
        return current
