"""Figures of the node under stress, against a node process over real DDS (issue 8's closing figures).

  .venv/bin/python scripts/stress_node.py [ENGINE]     # default: the demo engine

Prints: a burst of 50 simultaneous service calls and one of 50 action goals (max_queue 2: how many
were answered, refused as busy, or never answered), and a 10 s flood of 640x480 rgb8 frames on two
cameras as fast as this process publishes them (node RSS before, after 200 frames, at the end).
The tests (test/test_node_hardening.py) assert the same things with bounds; this prints the numbers.
"""

from __future__ import annotations

import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "42")

import rclpy  # noqa: E402
from action_msgs.msg import GoalStatus  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_node_hardening import BURST_QOS, DISCOVERY_SETTLE_S, NodeProcess, image_msg, wait_for  # noqa: E402

from mobilevlm_ros.action import Ask as AskAction  # noqa: E402
from mobilevlm_ros.msg import Caption  # noqa: E402
from mobilevlm_ros.srv import Ask as AskService  # noqa: E402


def settle(predicate, seconds: float) -> None:
    try:
        wait_for(predicate, seconds)
    except AssertionError:
        pass  # counted below as not answered


def service_burst(client, engine: str, ns: str) -> None:
    node = NodeProcess(ns, engine, max_queue=2, max_new_tokens=32)
    node.wait_log("active:")
    clients = [client.create_client(AskService, f"/{ns}/vlm/ask", qos_profile=BURST_QOS) for _ in range(50)]
    for c in clients:
        c.wait_for_service(timeout_sec=30)
    time.sleep(DISCOVERY_SETTLE_S)
    t0 = time.monotonic()
    futures = [c.call_async(AskService.Request(question="Describe it.", image=image_msg(64, 48, i)))
               for i, c in enumerate(clients)]
    settle(lambda: all(f.done() for f in futures), 30)
    replies = [f.result() for f in futures if f.done()]
    busy = sum(r.error.startswith("busy") for r in replies)
    print(f"50 service calls: answered {sum(r.success for r in replies)}, busy {busy}, "
          f"other errors {len(replies) - busy - sum(r.success for r in replies)}, "
          f"no reply {50 - len(replies)} "
          f"({time.monotonic() - t0:.2f} s)")
    node.stop()


def action_burst(client, engine: str, ns: str) -> None:
    node = NodeProcess(ns, engine, max_queue=2, max_new_tokens=32)
    node.wait_log("active:")
    actions = [ActionClient(client, AskAction, f"/{ns}/vlm/ask", goal_service_qos_profile=BURST_QOS,
                            result_service_qos_profile=BURST_QOS, cancel_service_qos_profile=BURST_QOS)
               for _ in range(50)]
    for a in actions:
        a.wait_for_server(timeout_sec=30)
    time.sleep(DISCOVERY_SETTLE_S)
    sent = [a.send_goal_async(AskAction.Goal(question="Describe it.", image=image_msg(64, 48, i)))
            for i, a in enumerate(actions)]
    settle(lambda: all(f.done() for f in sent), 30)
    handles = [f.result() for f in sent if f.done()]
    pending = [h.get_result_async() for h in handles if h.accepted]
    settle(lambda: all(f.done() for f in pending), 30)
    results = [f.result() for f in pending if f.done()]
    print(f"50 action goals: goal replies {len(handles)}, succeeded "
          f"{sum(r.status == GoalStatus.STATUS_SUCCEEDED for r in results)}, busy "
          f"{sum(r.result.error.startswith('busy') for r in results)}, no result {50 - len(results)}")
    node.stop()


def flood(client, engine: str, ns: str, seconds: float = 10.0) -> None:
    node = NodeProcess(ns, engine, cameras=["front", "rear"], caption_rate_hz=30.0, max_new_tokens=4)
    node.wait_log("active:")
    captions = []
    client.create_subscription(Caption, f"/{ns}/vlm/caption", captions.append, 100)
    pubs = [client.create_publisher(Image, f"/{ns}/{cam}/image_raw", qos_profile_sensor_data)
            for cam in ("front", "rear")]
    for pub in pubs:
        wait_for(lambda: pub.get_subscription_count() > 0)
    frames = [image_msg(640, 480, seed) for seed in range(4)]
    rss = [node.rss_mb()]
    t0, i = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        for pub in pubs:
            msg = frames[i % len(frames)]
            msg.header.stamp.sec = i
            pub.publish(msg)
        i += 1
        if i == 200:
            rss.append(node.rss_mb())
        time.sleep(0.005)
    rate = i / (time.monotonic() - t0)
    time.sleep(1.0)
    print(f"flood: {i} frames per camera at {rate:.0f} Hz each (640x480 rgb8, 2 cameras, {seconds:.0f} s): "
          f"node RSS {rss[0]:.0f} MB before, {rss[1]:.0f} after 200 frames, {node.rss_mb():.0f} at the end; "
          f"{len(captions)} captions; alive: {node.alive()}")
    node.stop()


def main() -> int:
    engine = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "engines", "demo")
    rclpy.init()
    client = rclpy.create_node("stress_client")
    executor = rclpy.executors.MultiThreadedExecutor(num_threads=4)
    executor.add_node(client)
    threading.Thread(target=executor.spin, daemon=True).start()
    ns = f"stress{os.getpid()}"
    service_burst(client, engine, ns + "_s")
    action_burst(client, engine, ns + "_a")
    flood(client, engine, ns + "_f")
    executor.shutdown()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
