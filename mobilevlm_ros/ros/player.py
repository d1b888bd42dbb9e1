"""The input side of mobilevlm-replay: a bag's frames and questions as timed events, played into a node.

Frames go to the node's camera inputs: the topics a running node reports on /diagnostics ("<camera>.topic",
after its remaps), or given by the user, else the names an unremapped node subscribes to
(<node's namespace>/<camera>/image_raw[/compressed]). They are published reliable, which every
subscription receives; before the first frame the player reads from the graph what the node subscribes
with, and waits for a node that follows its publishers (qos_reliability auto) to re-subscribe reliable:
a frame sent into the subscription being replaced would be lost, and a best-effort reader in another
process loses most large frames. Questions go to the node's ~/ask service. The bag's
questions come from bags.QUESTIONS_TOPIC, a convention of the bag, not the node's name.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from rclpy.exceptions import NameValidationException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.validate_full_topic_name import validate_full_topic_name
from rclpy.validate_namespace import validate_namespace
from rclpy.validate_node_name import validate_node_name
from sensor_msgs.msg import CompressedImage, Image

from ..msg import AnswerType
from ..runtime.errors import ImageError
from ..srv import Ask
from . import bags
from .bridge import compressed_imgmsg_to_rgb, imgmsg_to_rgb
from .params import CAMERA_NAME

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
# How long a node with qos_reliability auto may take to re-subscribe reliable (it looks every 0.5 s).
FOLLOW_TIMEOUT_S = 5.0


@dataclass
class Event:
    t_ns: int  # bag time
    kind: str  # "frame" | "question"
    camera: str
    data: object  # CDR bytes (frame) or the question dict
    compressed: bool = False


def stamp_ns(header) -> int:
    """A header's stamp in nanoseconds: frames, captions and answers are paired by it."""
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def split_node_name(name: str) -> Tuple[str, str]:
    """'/robot1/vlm' -> ('/robot1', 'vlm'); '/vlm' -> ('/', 'vlm'). ValueError (one line) when `name`
    is not the absolute name of a node."""
    if not name.startswith("/"):
        raise ValueError(f"{name!r} is not an absolute name: it must start with '/', e.g. /robot1/vlm")
    namespace, _, base = name.rpartition("/")
    namespace = namespace or "/"
    try:
        validate_namespace(namespace)
        validate_node_name(base)
        validate_full_topic_name(name)  # what the parts miss: '//vlm'
    except NameValidationException as e:  # rclpy's text: the reason, then the name with a caret
        reason = str(e).splitlines()[0].rstrip(":")
        raise ValueError(f"{name!r}: {reason[0].lower()}{reason[1:]}") from None
    return namespace, base


def camera_name(topic: str) -> str:
    """A bag topic's camera name, as the node's `cameras` parameter takes it: /front/image_raw -> front;
    /cam/color/image_raw/compressed -> cam/color; /my-cam/image_raw -> cam_my_cam."""
    name = re.sub(r"/image_raw(/compressed)?$", "", topic).strip("/")
    if not CAMERA_NAME.match(name):
        name = "cam_" + re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_")
    return name


def load_events(bag: str, questions_file: Optional[str] = None) -> Tuple[List[Event], Dict[str, str]]:
    """Frames and questions of a bag (plus a side file), in time order; and topic -> camera."""
    types = bags.topics(bag)
    image_topics = {t: camera_name(t) for t, ty in types.items() if ty in IMAGE_TYPES}
    if not image_topics:
        raise ValueError(f"bag {bag}: no sensor_msgs/Image or CompressedImage topic")
    events, t0 = [], None
    for topic, msgtype, ts, raw in bags.read(bag, set(image_topics) | {bags.QUESTIONS_TOPIC}):
        t0 = ts if t0 is None else t0
        if topic == bags.QUESTIONS_TOPIC:
            q = json.loads(bags.deserialize(msgtype, raw).data)
            events.append(Event(ts, "question", q.get("camera", ""), q))
        else:
            events.append(Event(ts, "frame", image_topics[topic], raw, msgtype.endswith("CompressedImage")))
    if questions_file:
        with open(questions_file) as f:
            for q in json.load(f):
                events.append(Event((t0 or 0) + int(float(q["t"]) * 1e9), "question", q.get("camera", ""), q))
    events.sort(key=lambda e: (e.t_ns, e.kind != "frame"))
    return events, image_topics


def calibration_frames(bag: str, limit: int = 64) -> List[Tuple[np.ndarray, List[str]]]:
    """Up to `limit` frames spread over the bag, as RGB, each with the questions the bag asks about
    its camera: what `mobilevlm-export --calibrate BAG` calibrates the decoder on. Frames that do not
    decode are skipped (a robot's bag may hold a few); none decoding is an error."""
    events, _ = load_events(bag)
    frames = [e for e in events if e.kind == "frame"]
    asked: Dict[str, List[str]] = {}
    for e in events:
        if e.kind == "question" and e.data.get("question"):
            asked.setdefault(e.camera, []).append(str(e.data["question"]))
    spread = np.linspace(0, len(frames) - 1, min(limit, len(frames))).astype(int) if frames else ()
    picks = sorted(set(spread))
    out, errors = [], []
    for i in picks:
        e = frames[i]
        try:
            if e.compressed:
                rgb = compressed_imgmsg_to_rgb(deserialize_message(e.data, CompressedImage))
            else:
                rgb = imgmsg_to_rgb(deserialize_message(e.data, Image))
        except ImageError as err:
            errors.append(str(err))
            continue
        out.append((rgb, asked.get(e.camera, []) + asked.get("", [])))  # "": the bag's default camera
    if picks and not out:
        raise ValueError(f"bag {bag}: no frame decodes ({errors[0]})")
    return out


def camera_transports(events: List[Event], image_topics: Dict[str, str]) -> Dict[str, str]:
    """camera -> "raw" or "compressed", as the bag carries it."""
    transports = {cam: "raw" for cam in sorted(set(image_topics.values()))}
    for e in events:
        if e.kind == "frame" and e.compressed:
            transports[e.camera] = "compressed"
    return transports


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def default_inputs(node: str, transports: Dict[str, str]) -> Dict[str, str]:
    """camera -> the topic a node named `node` subscribes to without remaps."""
    namespace = split_node_name(node)[0].rstrip("/")
    return {cam: f"{namespace}/{cam}/image_raw" + ("/compressed" if transport == "compressed" else "")
            for cam, transport in transports.items()}


def reported_inputs(ros_node, node: str, timeout: float) -> Dict[str, str]:
    """camera -> input topic, as the running node `node` reports them on /diagnostics (its remaps
    applied); {} when no diagnostics of that node arrive within `timeout` seconds."""
    from diagnostic_msgs.msg import DiagnosticArray

    found: Dict[str, str] = {}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name.split(": ")[0] == node:
                found.update({kv.key[:-len(".topic")]: kv.value for kv in status.values
                              if kv.key.endswith(".topic")})

    sub = ros_node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    try:
        wait_until(lambda: bool(found), timeout, "")
    except RuntimeError:
        pass
    finally:
        ros_node.destroy_subscription(sub)
    return dict(found)


def subscribed_reliability(ros_node, topic: str, node: str) -> Optional[ReliabilityPolicy]:
    """The reliability the node `node` (fully qualified) subscribes to `topic` with, from the graph;
    None while the graph shows no subscription of that node (or several, during a re-subscribe)."""
    namespace, name = split_node_name(node)
    mine = [i.qos_profile.reliability for i in ros_node.get_subscriptions_info_by_topic(topic)
            if i.node_name == name and i.node_namespace == namespace]
    return mine[0] if len(mine) == 1 else None


def answer_type_msg(spec: Optional[dict]) -> AnswerType:
    """A bag question's answer type ({"kind", "choices", "minimum", "maximum", "schema"}) as the message."""
    spec = spec or {}
    schema = spec.get("schema", "")
    return AnswerType(kind=str(spec.get("kind", "")), choices=[str(c) for c in spec.get("choices", [])],
                      minimum=[float(spec["minimum"])] if spec.get("minimum") is not None else [],
                      maximum=[float(spec["maximum"])] if spec.get("maximum") is not None else [],
                      schema=schema if isinstance(schema, str) else json.dumps(schema))


class Player:
    """Publishes a bag's frames to the node `node` (fully qualified name) and asks its questions.
    `inputs`: camera -> the topic the node takes that camera's frames on."""

    def __init__(self, ros_node, node: str, transports: Dict[str, str], inputs: Dict[str, str]):
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # a replay drops nothing
        self.ros_node, self.node = ros_node, node
        self.publishers = {}
        for cam, transport in transports.items():
            msg_class = CompressedImage if transport == "compressed" else Image
            self.publishers[cam] = ros_node.create_publisher(msg_class, inputs[cam], reliable)
        self.ask_client = ros_node.create_client(Ask, f"{node}/ask")

    def wait_for_node(self, timeout: float = 30.0) -> None:
        """Until the node serves ~/ask and subscribes to every camera."""
        if not self.ask_client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"no VLM node answers on {self.node}/ask "
                               "(is it running? did the engine load? is --node its full name?)")
        for cam, pub in self.publishers.items():
            wait_until(lambda: pub.get_subscription_count() > 0, timeout,
                       f"the node to subscribe to camera {cam} ({pub.topic_name})")
            try:  # a node in auto mode follows this reliable publisher: its new reader must be matched
                wait_until(lambda: subscribed_reliability(self.ros_node, pub.topic_name, self.node)
                           == ReliabilityPolicy.RELIABLE and pub.get_subscription_count() > 0,
                           FOLLOW_TIMEOUT_S, "")
            except RuntimeError:
                print(f"note: {self.node} subscribes to {pub.topic_name} best effort (its qos_reliability "
                      "is best_effort?): a frame over ~500 KB reaches it from this process only if the "
                      "publisher's Fast DDS has a segment that holds it (mobilevlm-replay loads "
                      "config/fastdds_large_frames.xml unless a profile is set); set the node's "
                      "qos_reliability to auto or reliable to have lost fragments sent again",
                      file=sys.stderr)

    def publish_frame(self, event: Event) -> None:
        """Publish a frame event's recorded bytes, as they are."""
        self.publishers[event.camera].publish(event.data)

    def ask(self, q: dict):
        """Ask a question dict through ~/ask; the future of its response. `answer_type` ({"kind", "choices",
        "minimum", "maximum", "schema"}) makes it a typed question."""
        return self.ask_client.call_async(Ask.Request(question=q["question"], camera=q.get("camera", ""),
                                                        max_new_tokens=int(q.get("max_new_tokens", 0)),
                                                        answer_type=answer_type_msg(q.get("answer_type"))))

    def play(self, events: List[Event], rate: float, wait_for_caption: Callable[[int, float], bool],
             on_response: Callable[[dict, object], None]) -> List[float]:
        """Play `events` at `rate` times recorded speed; rate 0: lock-step, each frame once the previous
        one is captioned (`wait_for_caption(stamp, timeout)`) and each question once answered. Every
        response goes to `on_response(question, response)` as it completes. Returns how late
        each frame was published, in seconds (recorded timing only)."""
        pending, timing_errors = [], []
        t0_bag, t0_wall = events[0].t_ns if events else 0, time.monotonic()
        for e in events:
            if rate > 0:  # recorded timing, scaled
                due = t0_wall + (e.t_ns - t0_bag) / 1e9 / rate
                time.sleep(max(0.0, due - time.monotonic()))
                if e.kind == "frame":
                    timing_errors.append(time.monotonic() - due)
            if e.kind == "frame":
                self.publish_frame(e)
                if rate == 0:  # lock-step: wait for its caption (the whole frame is decoded for its stamp)
                    msg = deserialize_message(e.data, CompressedImage if e.compressed else Image)
                    stamp = stamp_ns(msg.header)
                    if not wait_for_caption(stamp, 120.0):
                        print(f"warning: no caption for the frame stamped {stamp} within 120 s",
                              file=sys.stderr)
            else:
                fut = self.ask(e.data)
                pending.append((e.data, fut))
                if rate == 0:
                    wait_until(fut.done, 300, "an answer")
            for q, fut in [p for p in pending if p[1].done()]:
                pending.remove((q, fut))
                on_response(q, fut.result())
        for q, fut in pending:
            wait_until(fut.done, 300, "the last answers")
            on_response(q, fut.result())
        return timing_errors
