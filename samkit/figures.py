"""Where notebooks put what they reproduce: `figures/<stem>*.png` and `figures/<stem>.json`.

The `smoke` profile (the tests) writes to `build/figures-smoke/` instead, so a test run never
overwrites the figures made in the `class` or `full` profile.
"""

from __future__ import annotations

import json
from pathlib import Path

from samkit.atomic import atomic_path, write_bytes_atomic

REPO = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "class", "full")


class Figures:
    """Figures and numbers of one notebook (`stem`, e.g. "00_sam_tour") in one run profile."""

    def __init__(self, stem: str, profile: str):
        if profile not in PROFILES:
            raise ValueError(f"profile: expected one of {', '.join(PROFILES)}, got {profile!r}")
        self.stem, self.profile = stem, profile
        self.folder = REPO / ("build/figures-smoke" if profile == "smoke" else "figures")
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

    def record(self, **numbers) -> dict:
        """Merge `numbers` into `<stem>.json` (with the profile that produced them); return all."""
        path = self.numbers_path
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(numbers)
        current["profile"] = self.profile
        write_bytes_atomic(path, (json.dumps(current, indent=2, sort_keys=True) + "\n").encode())
        return current
