"""Everything the robot side imports is declared: a rosdep key in package.xml, or a line of
requirements.txt (what rosdep cannot install), with the pins setup.py and the venv set-up use."""

from __future__ import annotations

import ast
import glob
import os
import re
import sys
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Robot side: the runtime, the ROS layer, the scene world, the launch file, the robot-side tools.
SOURCES = ["mobilevlm_ros/runtime/*.py", "mobilevlm_ros/ros/*.py", "mobilevlm_ros/demo/*.py",
           "launch/*.py", "mobilevlm_ros/tools/caption.py", "mobilevlm_ros/tools/replay.py",
           "mobilevlm_ros/tools/demo_bag.py"]
# Python module -> its rosdep key, where the two names differ.
ROSDEP_KEY = {"numpy": "python3-numpy", "cv2": "python3-opencv", "PIL": "python3-pil",
              "psutil": "python3-psutil"}
NOT_IN_ROSDEP = {"onnxruntime", "sentencepiece", "rosbags", "llguidance"}


def _imported_modules() -> set:
    modules = set()
    for pattern in SOURCES:
        for path in glob.glob(os.path.join(ROOT, pattern)):
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"mobilevlm_ros", "__future__"}


def _exec_depends() -> set:
    root = ET.parse(os.path.join(ROOT, "package.xml")).getroot()
    return {e.text.strip() for e in root if e.tag in ("depend", "exec_depend")}


def _requirements(path: str) -> dict:
    with open(os.path.join(ROOT, path)) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return {re.split(r"[=<>\[]", line)[0]: line for line in lines if line}


def test_every_robot_side_import_is_declared():
    depends, requirements = _exec_depends(), _requirements("requirements.txt")
    missing = []
    for module in sorted(_imported_modules()):
        if module in NOT_IN_ROSDEP:
            if module not in requirements:
                missing.append(f"{module} (requirements.txt)")
        elif ROSDEP_KEY.get(module, module) not in depends:
            missing.append(f"{module} (package.xml: {ROSDEP_KEY.get(module, module)})")
    assert not missing, f"imported but not declared: {missing}"
    assert {"vision_msgs", "rclpy", "sensor_msgs", "launch_ros"} <= depends


def test_requirements_pins_match_setup_and_the_venv_set_up():
    requirements = _requirements("requirements.txt")
    with open(os.path.join(ROOT, "setup.py")) as f:
        setup = f.read()
    assert f'"{requirements["onnxruntime"]}"' in setup  # the cpu extra's pin
    assert requirements["rosbags"] == _requirements("scripts/ros-jazzy-requirements.txt")["rosbags"]
    assert requirements["sentencepiece"] in setup
    assert f'"{requirements["llguidance"]}"' in setup
