"""Our package's share folder (msg/, engines/, config/, launch/), wherever this install put it."""

from __future__ import annotations

import os
import sys


def share_path(relative: str) -> str:
    """`relative` (e.g. "engines/demo", "msg") in the first share folder that has it: the ament index
    (colcon install), the venv's share/mobilevlm_ros (pip set-up), then the source tree."""
    folders = []
    try:
        from ament_index_python.packages import get_package_share_directory

        folders.append(get_package_share_directory("mobilevlm_ros"))
    except Exception:  # not installed with colcon, or ament_index missing
        pass
    folders.append(os.path.join(sys.prefix, "share", "mobilevlm_ros"))
    folders.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    for folder in folders:
        path = os.path.join(folder, relative)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"mobilevlm_ros share folder: no {relative} in {', '.join(folders)}")
