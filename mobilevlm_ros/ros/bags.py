"""rosbag2 bags (sqlite3 or MCAP) through the `rosbags` library, with our message types embedded.

Messages travel as CDR bytes: rclpy serializes and deserializes them (`rclpy.serialization`), and
rosbags stores them with their definitions, so a bag written here is readable by `ros2 bag` and
by rosbags without our package.
"""

from __future__ import annotations

import os
from typing import Dict, Iterator, Tuple

from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from .share import share_path

OUR_MESSAGES = ("Timings", "BoundingBox", "Caption", "GroundedAnswer", "AnswerType", "WatchEvent",
                "WatchState", "WatchStates")
# Questions a bag carries for mobilevlm-replay to ask: std_msgs/String, JSON {"camera", "question", "truth"?}.
QUESTIONS_TOPIC = "/vlm/questions"


def typestore():
    """ROS 2 Jazzy's types plus ours."""
    store = get_typestore(Stores.ROS2_JAZZY)
    folder = share_path("msg")
    types = {}
    for name in OUR_MESSAGES:
        with open(os.path.join(folder, f"{name}.msg")) as f:
            types.update(get_types_from_msg(f.read(), f"mobilevlm_ros/msg/{name}"))
    store.register(types)
    return store


class BagWriter:
    """Write CDR messages to a new bag; one connection per topic."""

    def __init__(self, path: str, storage: str = "sqlite3"):
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.store = typestore()
        self.writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self.writer.open()
        self.connections: Dict[str, object] = {}

    def write(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes) -> None:
        conn = self.connections.get(topic)
        if conn is None:
            conn = self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)
        self.writer.write(conn, int(timestamp_ns), bytes(data))

    def close(self) -> None:
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read(path: str, topics=None) -> Iterator[Tuple[str, str, int, bytes]]:
    """(topic, msgtype, timestamp_ns, CDR bytes) of every message, in time order."""
    with AnyReader([_bag_path(path)], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:  # rosbags reads every connection when given none
            return
        for conn, ts, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, ts, bytes(raw)


def topics(path: str) -> Dict[str, str]:
    with AnyReader([_bag_path(path)], default_typestore=typestore()) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def _bag_path(path: str):
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"bag {path}: does not exist")
    return p


def deserialize(msgtype: str, data: bytes):
    """CDR bytes -> the rclpy message object of `msgtype` ('pkg/msg/Name')."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(data, message_class(msgtype))


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (rosidl_runtime_py is not on PyPI)."""
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
