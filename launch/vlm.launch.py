"""ros2 launch mobilevlm_ros vlm.launch.py [engine_dir:=DIR] [camera_topic:=/cam/image_raw] [namespace:=robot]
                                          [params_file:=my.yaml] [backend:=cpu|cuda|tensorrt|auto]

Starts the VLM node (a lifecycle node that configures and activates itself). The node listens to
<camera>/image_raw for each camera in its `cameras` parameter; camera_topic remaps the first
(default) camera's input, so a single camera needs no params file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode


def generate_launch_description():
    share = get_package_share_directory("mobilevlm_ros")
    args = [
        DeclareLaunchArgument("engine_dir", default_value=os.path.join(share, "engines", "demo"),
                              description="engine directory (manifest.json + ONNX graphs)"),
        DeclareLaunchArgument("camera_topic", default_value="camera/image_raw",
                              description="raw image topic of the default camera"),
        DeclareLaunchArgument("compressed_topic", default_value="camera/image_raw/compressed",
                              description="compressed image topic of the default camera (transports:=[compressed])"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "vlm.yaml"),
                              description="parameter file (see config/vlm.yaml)"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto, cpu, cuda or tensorrt"),
        DeclareLaunchArgument("node_name", default_value="vlm", description="node name"),
    ]
    node = LifecycleNode(
        package="mobilevlm_ros",
        executable="vlm_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"engine_dir": LaunchConfiguration("engine_dir"), "backend": LaunchConfiguration("backend")}],
        remappings=[("camera/image_raw", LaunchConfiguration("camera_topic")),
                    ("camera/image_raw/compressed", LaunchConfiguration("compressed_topic"))],
    )
    return LaunchDescription(args + [node])
