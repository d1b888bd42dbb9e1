"""A synthetic camera in its own process: raw rgb8 frames of the scene world on a topic, at a fixed rate,
with the QoS a driver would choose. What `mobilevlm-bench --delivery` and the cross-process tests use
as "a camera driver in another process".

  python -m mobilevlm_ros.tools.bench.camera TOPIC [--size 640x480] [--rate 10] [--frames 50]
         [--reliability reliable|best_effort] [--settle 2] [--gap 0]

Waits for a subscriber, then `--settle` seconds (a node following the publisher's QoS re-subscribes
meanwhile; nothing is sent), then publishes `--frames` frames at `--rate` Hz, each a different scene
(8 in turn), stamped with the wall clock. Reliable: the ROS default profile (keep last 10); best effort:
the sensor-data profile (keep last 5), the two a camera driver ships with. Prints one JSON line
({"published", "stamps_ns": each frame's stamp}) and lingers `--linger` seconds so that a reliable
writer can repair its last frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def parse_size(text: str) -> tuple:
    width, sep, height = text.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480")
    return int(width), int(height)


def scene_frames(width: int, height: int, count: int = 8) -> list:
    """`count` rgb8 payloads of different demo scenes (different enough that captions run inference)."""
    from ...demo import scenes

    return [scenes.make_scene(40_000_000 + i, width, height).image.tobytes() for i in range(count)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="camera", description=__doc__.split("\n\n")[0])
    p.add_argument("topic")
    p.add_argument("--size", type=parse_size, default=(640, 480))
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--reliability", choices=["reliable", "best_effort"], default="reliable")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between the first match and frame 1")
    p.add_argument("--linger", type=float, default=2.0, help="seconds after the last frame")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a subscriber")
    p.add_argument("--frame-id", default="camera_optical_frame")
    a = p.parse_args(argv)

    import rclpy
    from rclpy.qos import qos_profile_sensor_data, qos_profile_system_default
    from sensor_msgs.msg import Image

    width, height = a.size
    # Made once: filling a message's data is a copy of megabytes, which a driver does not pay per frame.
    messages = [Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width, data=d)
                for d in scene_frames(width, height)]
    rclpy.init()
    node = rclpy.create_node("synthetic_camera")
    qos = qos_profile_system_default if a.reliability == "reliable" else qos_profile_sensor_data
    pub = node.create_publisher(Image, a.topic, qos)
    try:
        end = time.monotonic() + a.wait
        while pub.get_subscription_count() == 0:
            if time.monotonic() > end:
                print(f"camera: no subscriber on {a.topic} within {a.wait:g} s", file=sys.stderr)
                return 1
            time.sleep(0.02)
        time.sleep(a.settle)
        t0, stamps = time.monotonic(), []
        for i in range(a.frames):
            time.sleep(max(0.0, t0 + i / a.rate - time.monotonic()))
            stamp = time.time_ns()
            msg = messages[i % len(messages)]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            msg.header.frame_id = a.frame_id
            pub.publish(msg)
            stamps.append(stamp)
        print(json.dumps({"published": a.frames, "stamps_ns": stamps}), flush=True)
        time.sleep(a.linger)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
