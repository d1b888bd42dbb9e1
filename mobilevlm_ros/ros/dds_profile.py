"""The Fast DDS profile for large raw frames (config/fastdds_large_frames.xml) and the environment
that loads it: the launch file's `large_frames:=true`, the delivery benchmark and its tests use these."""

from __future__ import annotations

from typing import Dict

LARGE_FRAMES_PROFILE = "config/fastdds_large_frames.xml"
# Fast DDS 2.x (Humble, Jazzy) reads the first, 3.x (Kilted, Rolling) the second.
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def profile_environment(path: str) -> Dict[str, str]:
    """The environment variables that make every Fast DDS participant of a process load `path`."""
    return {name: path for name in PROFILE_VARIABLES}
