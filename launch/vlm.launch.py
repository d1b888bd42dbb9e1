"""Starts the VLM node (a lifecycle node that configures and activates itself).

  ros2 launch mobilevlm_ros vlm.launch.py [model:=NAME] [params_file:=my.yaml] [engine_dir:=DIR]
      [backend:=auto|cpu|cuda|tensorrt] [cameras:="[front, rear]"] [front_topic:=/cam0/image_raw]
      [front_compressed_topic:=/cam0/image_raw/compressed] [camera_topic:=...] [compressed_topic:=...]
      [namespace:=robot] [node_name:=vlm] [large_frames:=false]

Parameters come from params_file (default config/vlm.yaml), then from model:=NAME's
config/models/NAME.yaml (one file per model variant: engine_dir, backend, threads, max_context,
max_new_tokens), then from engine_dir:=, backend:= and cameras:=, each later source winning.

The node listens to N/image_raw (or N/image_raw/compressed with `transports: [compressed]` in the
params file) for each camera N of its `cameras` parameter:
  cameras:=            "[front, rear]" or "front,rear"; empty: the params file's (default: camera)
  N_topic:=            remaps N/image_raw of camera N, e.g. front_topic:=/cam0/image_raw
  N_compressed_topic:= remaps N/image_raw/compressed of camera N
These per-camera arguments are not declared (ros2 launch passes any name:=value on); without
cameras:= they apply to whichever camera they name. camera_topic:= and compressed_topic:= are those
of the default camera `camera`, so a single camera needs no params file.
large_frames:=true makes the node's Fast DDS load config/fastdds_large_frames.xml (a 32 MB shared-memory
segment, for raw frames over 512 KB). A camera's frames need it in the camera driver's process too: the
publisher's segment is the one that must hold a frame (README, "Large raw frames").
Argument handling: mobilevlm_ros/ros/launch_args.py.
"""

import os
from typing import List

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue

from mobilevlm_ros.ros.launch_args import camera_remappings, node_environment, node_parameters, parse_cameras

PACKAGE = "mobilevlm_ros"


def _typed(value):
    # launch_ros reads a plain string as YAML: a camera named `on` would become True.
    return ParameterValue(value, value_type=List[str] if isinstance(value, list) else str)


def _node(context):
    configs = dict(context.launch_configurations)
    parameters = node_parameters(configs, get_package_share_directory(PACKAGE))
    parameters = [{k: _typed(v) for k, v in p.items()} if isinstance(p, dict) else p for p in parameters]
    return [LifecycleNode(
        package=PACKAGE,
        executable="vlm_node",
        name=configs["node_name"],
        namespace=configs["namespace"],
        output="screen",
        parameters=parameters,
        remappings=camera_remappings(parse_cameras(configs["cameras"]), configs),
        additional_env=node_environment(configs, get_package_share_directory(PACKAGE)),
    )]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    arguments = [
        ("model", "", "model variant: config/models/NAME.yaml (e.g. demo, mobilevlm_v2_1.7b_int4_cpu), "
                      "loaded after params_file; empty: none"),
        ("params_file", os.path.join(share, "config", "vlm.yaml"), "parameter file (see config/vlm.yaml)"),
        ("engine_dir", "", "engine directory (manifest.json + ONNX graphs); empty: the parameter files'"),
        ("backend", "", "auto, cpu, cuda or tensorrt; empty: the parameter files'"),
        ("cameras", "", "camera names, \"[front, rear]\" or front,rear; empty: the parameter files'. "
                        "Camera N's topics: N_topic:=, N_compressed_topic:="),
        ("camera_topic", "", "raw image topic of the default camera `camera`; empty: camera/image_raw"),
        ("compressed_topic", "", "compressed topic of the default camera `camera` "
                                 "(transports: [compressed]); empty: camera/image_raw/compressed"),
        ("namespace", "", "namespace of the node and its topics"),
        ("node_name", "vlm", "node name"),
        ("large_frames", "false", "true: the node's Fast DDS loads config/fastdds_large_frames.xml (give the "
                                  "camera driver's process the same profile: README, Large raw frames)"),
    ]
    return LaunchDescription([DeclareLaunchArgument(name, default_value=default, description=description)
                              for name, default, description in arguments]
                             + [OpaqueFunction(function=_node)])
