"""Which CLLM4Rec profile a run gets: ``profile: auto`` picks ``cpu`` without a GPU and ``paper`` with one.

A profile is a yaml of CLLM4Rec options in ``properties/profile/``, read above the model's defaults and below
everything the user passes, so any key of it can still be overridden; ``none`` reads no profile.
"""

from pathlib import Path

PROFILE_DIR = Path(__file__).parent / "properties" / "profile"
PROFILES = ("auto", "cpu", "paper", "none")


def profile_file(name):
    return PROFILE_DIR / f"{name}.yaml"


def gpu_requested(settings):
    import torch

    return bool(settings.get("use_gpu", True)) and torch.cuda.is_available()


def resolve_profile(settings):
    """``(profile, reason)`` for a run whose user settings are ``settings`` (files, dict and command line)."""
    requested = settings.get("profile", "auto")
    if requested not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {requested!r}")
    if requested != "auto":
        return requested, "asked for"
    if gpu_requested(settings):
        return "paper", "auto: a GPU is available"
    return "cpu", "auto: no GPU, and the paper's model would take days on a CPU"
