"""What every notebook's `parameters` cell reads: the run profile and the environment variables.

    run = samkit.notebook.parameters(model="tinysam", full_model="sam_vit_h")
    PROFILE, SEED, MODEL, DEVICE = run.profile, run.seed, run.model, run.device
    TEST_SCENES = run.pick(smoke=6, class_=60, full=300)
    RUNS = runs_folder(PROFILE)                # a temporary folder in smoke, runs/ otherwise

Variables (all optional): SAMKIT_PROFILE (smoke | class | full, default class), SAMKIT_SEED,
SAMKIT_MODEL, SAMKIT_CHECKPOINT, SAMKIT_DEVICE (auto), SAMKIT_DATA, SAMKIT_CACHE. Papermill may
still inject values after the cell: later cells read the plain variables, not `run`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samkit.errors import bad_argument

PROFILES = ("smoke", "class", "full")


@dataclass(frozen=True)
class RunParameters:
    """One notebook run's settings, read from the environment by `parameters`."""

    profile: str
    seed: int
    model: str | None
    checkpoint: str | None
    device: str
    data: str | None
    cache: str | None

    def pick(self, smoke: Any, class_: Any, full: Any) -> Any:
        """The value for this run's profile (`class_`: `class` is a Python keyword)."""
        return {"smoke": smoke, "class": class_, "full": full}[self.profile]



def check_profile(profile: Any, name: str = "profile") -> str:
    """`profile` if it is one of PROFILES, else the error naming `name` (an argument or a variable)."""
    if profile not in PROFILES:
        raise bad_argument(name, f"one of {', '.join(PROFILES)}", profile)
    return profile


def runs_folder(profile: str, prefix: str = "samkit-runs-") -> Path:
    """Where a notebook's training runs go: a fresh temporary folder in `smoke` (tests never touch
    `runs/`), `runs/` beside the notebook otherwise."""
    check_profile(profile)
    return Path(tempfile.mkdtemp(prefix=prefix)) if profile == "smoke" else Path("runs")


def parameters(model: str | None = "tinysam", full_model: str | None = None) -> RunParameters:
    """Read the run's settings from the environment. `model` is the default model, `full_model`
    the default of the `full` profile (an official checkpoint); SAMKIT_MODEL overrides both."""
    profile = check_profile(os.environ.get("SAMKIT_PROFILE", "class"), "SAMKIT_PROFILE")
    seed_text = os.environ.get("SAMKIT_SEED", "0")
    try:
        seed = int(seed_text)
    except ValueError:
        raise bad_argument("SAMKIT_SEED", "an integer", seed_text) from None
    default_model = full_model if profile == "full" and full_model else model
    return RunParameters(
        profile=profile, seed=seed, model=os.environ.get("SAMKIT_MODEL", default_model),
        checkpoint=os.environ.get("SAMKIT_CHECKPOINT"), device=os.environ.get("SAMKIT_DEVICE", "auto"),
        data=os.environ.get("SAMKIT_DATA"), cache=os.environ.get("SAMKIT_CACHE"))


__all__ = ["PROFILES", "RunParameters", "check_profile", "parameters", "runs_folder"]
