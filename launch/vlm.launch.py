"""ros2 launch mobilevlm_ros vlm.launch.py [engine_dir:=DIR] [camera_topic:=/cam/image_raw] [namespace:=robot]
                                          [params_file:=my.yaml] [backend:=auto|cpu|cuda|tensorrt]

Starts the VLM node (a lifecycle node that configures and activates itself). The node listens to
<camera>/image_raw for each camera in its `cameras` parameter; camera_topic remaps the default
camera's input, so a single camera needs no params file. engine_dir and backend, when given,
override the params file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def _node(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {k: arg(k) for k in ("engine_dir", "backend") if arg(k)}
    return [LifecycleNode(
        package="mobilevlm_ros",
        executable="vlm_node",
        name=arg("node_name"),
        namespace=arg("namespace"),
        output="screen",
        parameters=[arg("params_file")] + ([overrides] if overrides else []),
        remappings=[("camera/image_raw", arg("camera_topic")),
                    ("camera/image_raw/compressed", arg("compressed_topic"))],
    )]


def generate_launch_description():
    share = get_package_share_directory("mobilevlm_ros")
    return LaunchDescription([
        DeclareLaunchArgument("engine_dir", default_value="",
                              description="engine directory (manifest.json + ONNX graphs); "
                                          "empty: the params file's"),
        DeclareLaunchArgument("camera_topic", default_value="camera/image_raw",
                              description="raw image topic of the default camera"),
        DeclareLaunchArgument("compressed_topic", default_value="camera/image_raw/compressed",
                              description="compressed topic of the default camera "
                                          "(with transports:=[compressed])"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "vlm.yaml"),
                              description="parameter file (see config/vlm.yaml)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto, cpu, cuda or tensorrt; empty: the params file's"),
        DeclareLaunchArgument("node_name", default_value="vlm", description="node name"),
        OpaqueFunction(function=_node),
    ])
