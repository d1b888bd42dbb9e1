"""Point the ROS wheels' exported CMake files at this Python (run after every install of ROS wheels).

The ros-jazzy-* wheels were built in a manylinux image, and their exported CMake targets name that
image's Python include dir and numpy include dir, e.g.
  /opt/python/cp311-cp311/include/python3.11
  /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include
which do not exist here: a configure that uses them fails with
  Imported target "std_msgs::std_msgs__rosidl_generator_py" includes non-existent path ...
This rewrites them, in <prefix>/share/**/*.cmake, to this interpreter's include dir and
numpy.get_include(). Idempotent: a second run finds nothing to change.

Usage: <venv>/bin/python scripts/fix_ros_cmake_paths.py [prefix]   (prefix defaults to sys.prefix)
"""

from __future__ import annotations

import pathlib
import re
import sys
import sysconfig

import numpy

# Numpy's include first: it is longer and starts with the same /opt/python/cpXY-cpXY prefix.
_NUMPY = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")
_PYTHON = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")


def fix(prefix: pathlib.Path) -> list[pathlib.Path]:
    py_include = sysconfig.get_paths()["include"]
    np_include = numpy.get_include()
    changed = []
    for path in sorted((prefix / "share").glob("**/*.cmake")):
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        new = _PYTHON.sub(py_include, _NUMPY.sub(np_include, text))
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main() -> int:
    prefix = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    py_include = pathlib.Path(sysconfig.get_paths()["include"])
    if not (py_include / "Python.h").exists():
        print(f"fix_ros_cmake_paths: {py_include}/Python.h is missing: install this Python's headers "
              "(Debian/Ubuntu: apt-get install python3-dev)", file=sys.stderr)
        return 1
    changed = fix(prefix)
    print(f"fix_ros_cmake_paths: {len(changed)} CMake file(s) rewritten under {prefix}/share "
          f"(python include {py_include}, numpy include {numpy.get_include()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
