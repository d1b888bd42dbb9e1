"""What launch/vlm.launch.py makes of its arguments, as pure functions of the launch configurations
(a dict of strings), so they are tested without launch_ros (not on PyPI).

`ros2 launch` passes every `name:=value` into the launch configurations, declared or not; that is
how the per-camera arguments (`front_topic:=...`) arrive without a declaration per camera.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple, Union

from . import params as P
from .dds_profile import LARGE_FRAMES_PROFILE, profile_environment

# The camera a node without a `cameras` setting has; `camera_topic` / `compressed_topic` remap it.
DEFAULT_CAMERA = "camera"
RAW_SUFFIX, COMPRESSED_SUFFIX = "_topic", "_compressed_topic"
# Node parameters an explicit launch argument of the same name overrides (when not empty).
OVERRIDABLE = ("engine_dir", "backend")


def parse_cameras(text: str) -> List[str]:
    """Camera names from `[front, rear]`, `front,rear` or `front`; [] for an empty argument (the
    params file's cameras then). ValueError names an invalid or repeated camera."""
    items = text.strip()
    if not items:
        return []
    if items.startswith("[") and items.endswith("]"):
        items = items[1:-1]
    # Parsed by hand, not as YAML: YAML would turn a camera named `on` or `no` into a bool.
    names = [name.strip().strip("'\"") for name in items.split(",")]
    if names == [""]:
        raise ValueError(f"cameras: {text!r} names no camera (leave it out for the params file's cameras)")
    reason = P.check("cameras", names)  # the node's own check of the parameter
    if reason:
        raise ValueError(f"{reason} (cameras:={text!r})")
    return names


def _cameras_with_topic_arguments(configs: Dict[str, str]) -> List[str]:
    """The cameras that `N_topic` / `N_compressed_topic` arguments name: when `cameras` is not given,
    the cameras are the params file's, which only the node reads. A remapping of a topic the node
    does not subscribe to does nothing, so naming a camera it lacks is harmless."""
    names = []
    for key, value in configs.items():
        if key == "compressed_topic":  # the default camera's, like camera_compressed_topic
            key = DEFAULT_CAMERA + COMPRESSED_SUFFIX
        suffix = COMPRESSED_SUFFIX if key.endswith(COMPRESSED_SUFFIX) else RAW_SUFFIX
        name = key[:-len(suffix)] if key.endswith(suffix) else ""
        if value and P.CAMERA_NAME.match(name) and name not in names:
            names.append(name)
    return names


def camera_remappings(cameras: List[str], configs: Dict[str, str]) -> List[Tuple[str, str]]:
    """(from, to) remappings: `N_topic` remaps N/image_raw and `N_compressed_topic` remaps
    N/image_raw/compressed, for each camera N of `cameras` ([]: of each camera such an argument
    names). `camera_topic` / `compressed_topic` are the default camera's (`camera`); ValueError when
    one is given but `cameras` leaves that camera out. Empty arguments remap nothing."""
    if cameras and DEFAULT_CAMERA not in cameras:
        given = [name for name in ("camera_topic", "compressed_topic") if configs.get(name)]
        if given:
            raise ValueError(f"{given[0]} remaps the default camera {DEFAULT_CAMERA!r}, which cameras "
                             f"{cameras} leaves out: use {cameras[0]}_topic:= or "
                             f"{cameras[0]}_compressed_topic:= instead")
    remappings = []
    for name in cameras or _cameras_with_topic_arguments(configs):
        raw = configs.get(name + RAW_SUFFIX, "")
        compressed = configs.get(name + COMPRESSED_SUFFIX, "")
        if name == DEFAULT_CAMERA:
            compressed = compressed or configs.get("compressed_topic", "")
        if raw:
            remappings.append((f"{name}/image_raw", raw))
        if compressed:
            remappings.append((f"{name}/image_raw/compressed", compressed))
    return remappings


def model_files(share_dir: str) -> Dict[str, str]:
    """Model-variant params files by name: config/models/NAME.yaml."""
    folder = os.path.join(share_dir, "config", "models")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
    return {f[:-len(".yaml")]: os.path.join(folder, f) for f in names}


def node_parameters(configs: Dict[str, str], share_dir: str) -> List[Union[str, Dict[str, object]]]:
    """The node's `parameters`, later entries winning: the params file, the `model` file, then the
    explicit arguments (engine_dir, backend, cameras) as one dict. ValueError for an unknown model
    (listing the known ones) or an invalid argument value."""
    params_file = configs.get("params_file") or os.path.join(share_dir, "config", "vlm.yaml")
    if not os.path.isfile(params_file):
        raise ValueError(f"params_file: {params_file} is not a file")
    files = [params_file]
    model = configs.get("model", "")
    if model:
        known = model_files(share_dir)
        if model not in known:
            folder = os.path.join(share_dir, "config", "models")
            raise ValueError(f"model: no params file {model}.yaml in {folder}; "
                             f"available: {', '.join(known) or 'none'}")
        files.append(known[model])
    overrides: Dict[str, object] = {name: configs[name] for name in OVERRIDABLE if configs.get(name)}
    cameras = parse_cameras(configs.get("cameras", ""))
    if cameras:
        overrides["cameras"] = cameras
    for name, value in overrides.items():
        reason = P.check(name, value)
        if reason:
            raise ValueError(reason)
    return files + ([overrides] if overrides else [])


def node_environment(configs: Dict[str, str], share_dir: str) -> Dict[str, str]:
    """Environment variables for the node's process: with `large_frames:=true`, the ones that make its
    Fast DDS load config/fastdds_large_frames.xml (for what the node publishes, e.g. ~/annotated at
    camera resolution; a camera's frames need the profile in the camera's process). ValueError for a
    value that is not true or false."""
    value = configs.get("large_frames", "false").strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"large_frames: {configs['large_frames']!r} must be true or false")
    if value == "false":
        return {}
    return profile_environment(os.path.join(share_dir, LARGE_FRAMES_PROFILE))
