"""The BAG arguments of mobilevlm-regress: bags, folders of bags and globs -> bag paths, each with a key
that names its outputs (and pairs it with an earlier run's, `--against`)."""

from __future__ import annotations

import glob
import os
from typing import Dict, List


def is_bag(path: str) -> bool:
    """A rosbag2 bag: a folder with metadata.yaml."""
    return os.path.isfile(os.path.join(path, "metadata.yaml"))


def find_bags(args: List[str]) -> List[str]:
    """Each argument is a bag, a folder searched (recursively) for bags, or a glob of either. A path
    that is neither a bag nor a folder holding one is kept as given: its task then reports why it
    cannot be read, and the other bags go on. ValueError when a glob matches nothing."""
    found: List[str] = []
    for arg in args:
        paths = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if not paths:
            raise ValueError(f"{arg}: no file or folder matches")
        for path in paths:
            inside = [] if is_bag(path) or not os.path.isdir(path) else sorted(
                root for root, _, files in os.walk(path) if "metadata.yaml" in files)
            found.extend(inside or [path])
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    return unique


def bag_keys(paths: List[str]) -> Dict[str, str]:
    """path -> key: the bag folder's name; where two bags share a name, their path from the folder
    the duplicates have in common, with '/' as '__'."""
    names: Dict[str, List[str]] = {}
    for p in paths:
        names.setdefault(os.path.basename(os.path.abspath(p)), []).append(p)
    keys = {}
    for name, group in names.items():
        if len(group) == 1:
            keys[group[0]] = name
            continue
        common = os.path.commonpath([os.path.abspath(p) for p in group])
        for p in group:
            keys[p] = os.path.relpath(os.path.abspath(p), common).replace(os.sep, "__")
    return keys
