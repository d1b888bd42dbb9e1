"""The output side of mobilevlm-replay: what the node says, kept in arrival order and written to a bag.

Subscribes to the node's ~/caption, ~/watch_events (and ~/annotated) by the node's fully qualified
name, keeps the answers the player hands over, and writes everything under the node's names:
{node}/caption, {node}/answers, {node}/watch_events, {node}/annotated.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional, Tuple

from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

from ..msg import Caption, WatchEvent
from .bags import BagWriter
from .player import stamp_ns, wait_until

CAPTION_TYPE = "mobilevlm_ros/msg/Caption"
ANSWER_TYPE = "mobilevlm_ros/msg/GroundedAnswer"
IMAGE_TYPE = "sensor_msgs/msg/Image"
WATCH_EVENT_TYPE = "mobilevlm_ros/msg/WatchEvent"


class Recorder:
    """The node's captions (and annotated frames) as they arrive, and the answers it gave."""

    def __init__(self, ros_node, node: str, annotated: bool = False,
                 on_caption: Optional[Callable[[Caption], None]] = None,
                 on_watch_event: Optional[Callable[[WatchEvent], None]] = None):
        self.node = node
        self.records: List[Tuple[str, str, int, bytes]] = []  # (topic, type, arrival time, CDR bytes)
        self.captions: List[Caption] = []
        self.answers: List[tuple] = []  # (question dict, GroundedAnswer)
        self.watch_events: List[WatchEvent] = []
        self._caption_stamps = set()  # source stamps captioned so far (lock-step playback waits on them)
        self._changed = threading.Condition()  # guards the lists above; notified on each caption
        self._on_caption, self._on_watch_event = on_caption, on_watch_event
        # raw: the bytes go to the bag as the node sent them; only captions are decoded (for stamps).
        captions = ros_node.create_subscription(Caption, f"{node}/caption", self._caption, 50, raw=True)
        events = ros_node.create_subscription(WatchEvent, f"{node}/watch_events", self._watch_event, 50,
                                              raw=True)
        self.subscriptions = [captions]
        self.watch_subscription = events
        if annotated:
            topic = f"{node}/annotated"
            self.subscriptions.append(ros_node.create_subscription(
                Image, topic, lambda raw: self._add(topic, IMAGE_TYPE, raw), 50, raw=True))

    def wait_for_node(self, timeout: float = 10.0) -> None:
        """Until each subscription is matched with the node's publisher: captions of the first frames
        would be lost otherwise, and the node draws annotated frames only while someone subscribes."""
        for sub in self.subscriptions:
            wait_until(lambda: sub.get_publisher_count() > 0, timeout, f"a publisher on {sub.topic_name}")

    def wait_for_caption(self, stamp: int, timeout: float) -> bool:
        """Whether the frame stamped `stamp` (ns) was captioned within `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: stamp in self._caption_stamps, timeout=timeout)

    def add_answer(self, question: dict, answer) -> None:
        """An answer (GroundedAnswer) to `question`, as the node's ~/ask returned it."""
        self._add(f"{self.node}/answers", ANSWER_TYPE, serialize_message(answer))
        with self._changed:
            self.answers.append((question, answer))

    def write(self, bag: str, storage: str = "sqlite3") -> None:
        """Everything recorded, in arrival order, to a new bag."""
        with self._changed:
            records = sorted(self.records, key=lambda r: r[2])
        with BagWriter(bag, storage) as out:
            for topic, msgtype, ts, data in records:
                out.write(topic, msgtype, ts, data)

    def _caption(self, raw: bytes) -> None:
        self._add(f"{self.node}/caption", CAPTION_TYPE, raw)
        caption = deserialize_message(raw, Caption)
        with self._changed:
            self.captions.append(caption)
            self._caption_stamps.add(stamp_ns(caption.header))
            self._changed.notify_all()
        if self._on_caption is not None:
            self._on_caption(caption)

    def _watch_event(self, raw: bytes) -> None:
        self._add(f"{self.node}/watch_events", WATCH_EVENT_TYPE, raw)
        event = deserialize_message(raw, WatchEvent)
        with self._changed:
            self.watch_events.append(event)
        if self._on_watch_event is not None:
            self._on_watch_event(event)

    def _add(self, topic: str, msgtype: str, data: bytes) -> None:
        with self._changed:
            self.records.append((topic, msgtype, time.time_ns(), bytes(data)))
