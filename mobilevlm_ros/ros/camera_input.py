"""One camera's subscription, with a reliability that follows the camera's publishers.

A camera driver publishes with the QoS it chooses; ROS's default profile is reliable, the sensor-data
convention best effort. Between two processes the choice matters for large raw frames: a frame over
Fast DDS's shared-memory segment (512 KB by default) crosses as fragments, and a best-effort reader
drops the whole frame when one fragment is overwritten before it is read (nothing repairs it), so a
640x480 rgb8 camera delivers almost nothing to a best-effort subscription. A reliable reader has the
missing fragments sent again. So `qos_reliability: auto` (the default) subscribes reliable when every
publisher of the topic is reliable and best effort otherwise (a reliable subscription would receive
nothing from a best-effort publisher), and re-subscribes when the publishers change. `best_effort`
and `reliable` fix the choice.

The worker keeps the camera's state (latest frame, counters, last caption); re-subscribing replaces
only the DDS reader. Frames DDS knows it lost (the message-lost event: a gap in a publisher's
sequence numbers) are counted here, across re-subscriptions.
"""

from __future__ import annotations

import threading
from typing import Callable, List, Sequence, Tuple

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from .qos_check import SubscriptionEventCallbacks


def reliability_name(policy: ReliabilityPolicy) -> str:
    return "reliable" if policy == ReliabilityPolicy.RELIABLE else "best_effort"


def choose_reliability(mode: str, publishers: Sequence[Tuple[str, ReliabilityPolicy]],
                       current: ReliabilityPolicy) -> Tuple[ReliabilityPolicy, str]:
    """The reliability to subscribe with, and why. `publishers`: (node name, reliability) of each
    publisher of the topic; `current`: what the subscription has now, kept while there is none (a
    driver restarting with the same QoS then finds the subscription it had)."""
    if mode == "reliable":
        return ReliabilityPolicy.RELIABLE, "qos_reliability is reliable"
    if mode == "best_effort":
        return ReliabilityPolicy.BEST_EFFORT, "qos_reliability is best_effort"
    if not publishers:
        return current, "no publisher yet; best effort receives from either kind"
    described = ", ".join(f"{name} {reliability_name(r)}" for name, r in publishers)
    if all(r == ReliabilityPolicy.RELIABLE for _, r in publishers):
        return ReliabilityPolicy.RELIABLE, (f"auto: every publisher is reliable ({described}); a reliable "
                                            "reader has lost fragments of large frames sent again")
    return ReliabilityPolicy.BEST_EFFORT, (f"auto: not every publisher is reliable ({described}); "
                                           "a reliable reader would get nothing from a best-effort one")


class CameraInput:
    """The subscription of one camera to `topic` (relative, remaps applied by rclpy), re-made with the
    reliability `choose_reliability` gives whenever `update()` finds the choice changed.

    `on_message(msg)` gets every frame; `incompatible_qos(qos)` makes the incompatible-QoS event
    callback for a subscription of that QoS (the node's loud report); `log(line)` says each choice."""

    def __init__(self, node, camera: str, msg_type, topic: str, mode: str, depth: int,
                 on_message: Callable, incompatible_qos: Callable[[QoSProfile], Callable],
                 log: Callable[[str], None]):
        self.node, self.camera, self.msg_type, self.mode, self.depth = node, camera, msg_type, mode, depth
        self.topic_name = node.resolve_topic_name(topic)  # what the graph and /diagnostics name
        self._on_message, self._incompatible_qos, self._log = on_message, incompatible_qos, log
        self.reliability = ReliabilityPolicy.BEST_EFFORT
        self.publishers: List[Tuple[str, ReliabilityPolicy]] = []
        self.subscription = None
        self._closed = False
        self._lost = 0  # frames DDS reported lost, over every subscription this camera had
        self._lock = threading.Lock()
        self._subscribing = threading.Lock()  # destroy() (deactivate) waits for an update() under way
        self.update(initial=True)

    @property
    def frames_lost(self) -> int:
        with self._lock:
            return self._lost

    def update(self, initial: bool = False) -> bool:
        """Look at the topic's publishers; re-subscribe if the reliability to use changed. Call it from
        the callback group of the frame callbacks, so that no frame callback runs meanwhile."""
        with self._subscribing:
            return not self._closed and self._update(initial)

    def _update(self, initial: bool) -> bool:
        self.publishers = sorted(
            (_node_name(p), p.qos_profile.reliability)
            for p in self.node.get_publishers_info_by_topic(self.topic_name))
        chosen, why = choose_reliability(self.mode, self.publishers, self.reliability)
        if not initial and chosen == self.reliability:
            return False
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
        self.reliability = chosen
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.depth, reliability=chosen)
        events = SubscriptionEventCallbacks(incompatible_qos=self._incompatible_qos(qos),
                                            message_lost=self._count_lost)
        self.subscription = self.node.create_subscription(self.msg_type, self.topic_name, self._on_message,
                                                          qos, event_callbacks=events)
        self._log(f"camera '{self.camera}': subscribing to {self.topic_name} {reliability_name(chosen)} "
                  f"({why})")
        return True

    def destroy(self) -> None:
        with self._subscribing:
            self._closed = True
            if self.subscription is not None:
                self.node.destroy_subscription(self.subscription)
                self.subscription = None

    def _count_lost(self, info) -> None:
        with self._lock:
            self._lost += info.total_count_change


def _node_name(info) -> str:
    # Until the publisher's ROS graph message arrives, rmw names its node _NODE_NAME_UNKNOWN_.
    if not info.node_name or info.node_name.startswith("_NODE_NAME_UNKNOWN"):
        return "a node not named yet"
    return f"{info.node_namespace.rstrip('/')}/{info.node_name}"
