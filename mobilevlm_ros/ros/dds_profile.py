"""The Fast DDS profile for large raw frames (config/fastdds_large_frames.xml) and the environment
that loads it: the launch file's `large_frames:=true`, the delivery benchmark and its tests use these."""

from __future__ import annotations

import os
from typing import Dict

LARGE_FRAMES_PROFILE = "config/fastdds_large_frames.xml"
# Fast DDS 2.x (Humble, Jazzy) reads the first, 3.x (Kilted, Rolling) the second.
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def profile_environment(path: str) -> Dict[str, str]:
    """The environment variables that make every Fast DDS participant of a process load `path`."""
    return {name: path for name in PROFILE_VARIABLES}


def load_large_frames_profile() -> str:
    """Make this process's Fast DDS participants load the large-frame profile, unless a profile is set
    already (the user's choice wins); the path in effect ('' if the user's). Only before this process
    creates its first participant: Fast DDS reads the variables once."""
    if any(os.environ.get(name) for name in PROFILE_VARIABLES):
        return ""
    from .share import share_path

    path = share_path(LARGE_FRAMES_PROFILE)
    os.environ.update(profile_environment(path))
    return path
