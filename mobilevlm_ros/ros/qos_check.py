"""Incompatible QoS between the node and its peers, said out loud.

DDS drops a connection whose QoS policies do not match (a best-effort camera and a node that asks
for reliable frames: the most reported silent failure of ROS 2 vision nodes). rmw reports it as
an incompatible-QoS event on both ends; these functions turn it into one line that names the
topic, the policy, what each side has, and what to change.
"""

from __future__ import annotations

from typing import Iterable

try:  # Jazzy (and Iron)
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks  # noqa: F401
from rclpy.qos import QoSPolicyKind, QoSProfile


def policy_value(profile: QoSProfile, kind: QoSPolicyKind) -> str:
    """The value of one policy of `profile`, as ROS parameter files spell it (best_effort, ...)."""
    value = {QoSPolicyKind.RELIABILITY: profile.reliability, QoSPolicyKind.DURABILITY: profile.durability,
             QoSPolicyKind.LIVELINESS: profile.liveliness, QoSPolicyKind.HISTORY: profile.history}.get(kind)
    if value is not None:
        return value.name.lower()
    return str({QoSPolicyKind.DEADLINE: profile.deadline, QoSPolicyKind.LIFESPAN: profile.lifespan,
                QoSPolicyKind.LIVELINESS_LEASE_DURATION: profile.liveliness_lease_duration}.get(kind, "?"))


def incompatible_message(topic: str, kind: QoSPolicyKind, ours: QoSProfile, theirs: Iterable[QoSProfile],
                         we_are: str, fix: str) -> str:
    """'<topic>: incompatible QoS (<POLICY>): this node <subscribes|publishes> with X, the
    <publisher|subscriber> has Y; nothing is delivered. <fix>'"""
    kind = QoSPolicyKind(int(kind))  # rmw hands over its own enum
    peer = "publisher" if we_are == "subscribes" else "subscriber"
    mine = policy_value(ours, kind)
    # The peers that differ from us are the incompatible ones; compatible ones share the topic too.
    values = sorted({policy_value(p, kind) for p in theirs} - {mine}) or ["?"]
    return (f"{topic}: incompatible QoS ({kind.name}): this node {we_are} with {mine}, "
            f"the {peer} has {' / '.join(values)}; nothing is delivered. {fix}")
