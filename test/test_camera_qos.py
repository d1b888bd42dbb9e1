"""Frames from a camera in another process: QoS that follows the publisher, large raw frames, the replay
against a running node (issue 27).

Every party is its own process, as on a robot: the node (`python -m mobilevlm_ros.ros.node` with its
default parameters: the demo engine, qos_reliability auto, captions at 0.5 Hz), the camera
(`python -m mobilevlm_ros.tools.bench.camera`, 640x480 rgb8 unless said) and mobilevlm-replay. What
arrived is read as a robot would: the node's captions and its /diagnostics. Processes in one machine
share memory through Fast DDS's shared-memory transport, where a best-effort reader loses most frames
over 512 KB; the in-process tests (test_node.py) never see that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from conftest import NodeProcess, wait_for  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from mobilevlm_ros.msg import Caption  # noqa: E402
from mobilevlm_ros.ros.camera_input import choose_reliability  # noqa: E402
from mobilevlm_ros.ros.dds_profile import LARGE_FRAMES_PROFILE, PROFILE_VARIABLES, profile_environment  # noqa: E402
from mobilevlm_ros.ros.share import share_path  # noqa: E402

RELIABLE, BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


# -- the choice, on its own -----------------------------------------------------------------------
def test_auto_is_reliable_only_when_every_publisher_is():
    assert choose_reliability("auto", [("/cam", RELIABLE)], BEST_EFFORT)[0] == RELIABLE
    assert choose_reliability("auto", [("/a", RELIABLE), ("/b", RELIABLE)], BEST_EFFORT)[0] == RELIABLE
    chosen, why = choose_reliability("auto", [("/a", RELIABLE), ("/b", BEST_EFFORT)], RELIABLE)
    assert chosen == BEST_EFFORT and "/b best_effort" in why
    assert choose_reliability("auto", [("/b", BEST_EFFORT)], RELIABLE)[0] == BEST_EFFORT


def test_auto_keeps_its_choice_while_no_publisher_is_there_and_overrides_are_fixed():
    assert choose_reliability("auto", [], RELIABLE)[0] == RELIABLE  # a driver restarting finds it as it was
    assert choose_reliability("auto", [], BEST_EFFORT)[0] == BEST_EFFORT
    assert choose_reliability("best_effort", [("/cam", RELIABLE)], RELIABLE)[0] == BEST_EFFORT
    assert choose_reliability("reliable", [("/cam", BEST_EFFORT)], BEST_EFFORT)[0] == RELIABLE


# -- across processes -----------------------------------------------------------------------------
def environment(large_frames: bool = False, profile: str = "") -> dict:
    """This environment without any Fast DDS profile, or with the large-frame one, or with `profile`."""
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    if large_frames:
        env.update(profile_environment(share_path(LARGE_FRAMES_PROFILE)))
    if profile:
        env.update(profile_environment(profile))
    return env


def camera(topic: str, reliability: str, frames: int, rate: float, size: str = "640x480",
           large_frames: bool = False, wait: bool = True):
    """The synthetic camera as its own process: run to its end (its JSON report), or the Popen."""
    args = [sys.executable, "-m", "mobilevlm_ros.tools.bench.camera", topic, "--size", size,
            "--rate", str(rate), "--frames", str(frames), "--reliability", reliability,
            "--settle", "2", "--linger", "1.5"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(large_frames))
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


class Listener:
    """The node's captions and /diagnostics, heard in this process."""

    def __init__(self, ns: str):
        self.name = f"/{ns}/vlm"
        self.node = rclpy.create_node(f"listener_{ns}")
        self.captions, self.reports = [], []
        self.node.create_subscription(Caption, f"{self.name}/caption", self.captions.append,
                                      QoSProfile(depth=100, reliability=RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = rclpy.executors.SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.split(": ")[0] == self.name:
                self.reports.append({kv.key: kv.value for kv in status.values})

    def values(self) -> dict:
        """A report that left the node after this call."""
        n = len(self.reports)
        wait_for(lambda: len(self.reports) > n + 1, what=f"/diagnostics of {self.name}")
        return self.reports[-1]

    def count(self, key: str) -> int:
        return int(self.values()[key])

    def captioned(self, stamps) -> set:
        return {s for s in stamps
                if any(c.header.stamp.sec * 10**9 + c.header.stamp.nanosec == s for c in list(self.captions))}

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture
def node_with_listener(ros):
    """start(**params) -> (NodeProcess, Listener): the node in a namespace of its own, active."""
    made = []

    def start(**params):
        ns = f"q{os.getpid()}_{len(made)}_{int(time.monotonic() * 1000) % 100000}"
        listener = Listener(ns)
        node = NodeProcess(ns, env=environment(), **params)
        made.append((node, listener))
        node.wait_log("active:", timeout=60)
        return node, listener

    yield start
    for node, listener in made:
        node.stop()
        listener.close()


def test_every_frame_of_a_slow_reliable_640x480_camera_is_received_and_captioned(node_with_listener):
    """Defaults throughout. Fails with a best-effort default subscription: 0 of such frames arrived."""
    node, listener = node_with_listener()
    topic = f"/{node.ns}/camera/image_raw"
    sent = camera(topic, "reliable", frames=4, rate=1 / 3)  # slower than caption_rate_hz 0.5
    wait_for(lambda: len(listener.captioned(sent["stamps_ns"])) == 4, timeout=30,
             what=f"captions of the 4 frames (got {len(listener.captioned(sent['stamps_ns']))})")
    values = listener.values()
    assert values["camera.qos_reliability"] == "reliable"
    assert int(values["camera.frames_received"]) == 4 and int(values["camera.frames_lost"]) == 0
    assert f"subscribing to {topic} reliable (auto: every publisher is reliable" in node.log


def test_best_effort_cameras_are_received_and_what_transport_lost_is_counted(node_with_listener):
    """One node, three best-effort cameras in turn: small frames arrive (a reliable subscription would get
    none); 640x480 ones lose most frames in Fast DDS's default 512 KB segment, and /diagnostics counts
    them; with config/fastdds_large_frames.xml in the camera's process every one arrives."""
    node, listener = node_with_listener()
    topic = f"/{node.ns}/camera/image_raw"

    def delivered(**kwargs):
        before = listener.values()
        sent = camera(topic, "best_effort", **kwargs)["published"]
        after = listener.values()
        assert after["camera.qos_reliability"] == "best_effort"
        return sent, *(int(after[f"camera.{k}"]) - int(before[f"camera.{k}"])
                       for k in ("frames_received", "frames_lost"))

    sent, received, lost = delivered(frames=10, rate=5, size="320x240")  # 230 KB: fits the segment
    assert received >= sent - 1 and lost <= 1, (sent, received, lost)
    sent, received, lost = delivered(frames=20, rate=10)
    assert lost >= 1 and received + lost >= sent - 3, (sent, received, lost)  # the first, last few unseen
    sent, received, lost = delivered(frames=20, rate=10, large_frames=True)
    assert received >= sent - 1 and lost == 0, (sent, received, lost)
    assert "frame(s) lost in transport" in node.log and "fastdds_large_frames.xml" in node.log
    assert "incompatible QoS" not in node.log


def test_the_subscription_follows_publishers_that_change_and_the_camera_keeps_its_state(node_with_listener):
    """A reliable camera, then a best-effort one beside it (-> best effort), then the reliable one alone
    again (-> reliable): each change logged once, counters and the latest frame kept throughout."""
    node, listener = node_with_listener(diagnostics_period_s=0.5)
    topic = f"/{node.ns}/camera/image_raw"
    steady = camera(topic, "reliable", frames=10_000, rate=2, size="320x240", wait=False)
    try:
        node.wait_log(f"subscribing to {topic} reliable", timeout=30)
        wait_for(lambda: listener.count("camera.frames_received") >= 3, what="frames of the reliable camera")
        before_switch = listener.count("camera.frames_received")
        camera(topic, "best_effort", frames=6, rate=2, size="320x240")  # returns after it has gone
        assert f"subscribing to {topic} best_effort (auto: not every publisher is reliable" in node.log
        node.wait_log(f"subscribing to {topic} reliable (auto: every publisher is reliable", timeout=30)
        received_back = listener.count("camera.frames_received")
        assert received_back >= before_switch + 6  # both cameras' frames came in while it was best effort
        wait_for(lambda: listener.count("camera.frames_received") >= received_back + 3,
                 what="frames of the reliable camera after the switch back")
    finally:
        steady.terminate()
        steady.communicate(timeout=30)
    changes = [line for line in node.lines if f"subscribing to {topic}" in line]
    assert [c.split(f"subscribing to {topic} ")[1].split(" ")[0] for c in changes] == [
        "best_effort", "reliable", "best_effort", "reliable"], changes  # the first: no publisher yet
    values = listener.values()
    assert int(values["camera.captions"]) + int(values["camera.captions_reused"]) >= 2
    received = [int(r["camera.frames_received"]) for r in listener.reports]  # every 0.5 s: a reset shows
    assert received == sorted(received) and received[-1] > received_back, received
    assert "incompatible QoS" not in node.log


def replay_into(node: NodeProcess, bag: str, out: str, env: dict) -> dict:
    args = [sys.executable, "-m", "mobilevlm_ros.tools.replay", bag, "--node", f"/{node.ns}/vlm",
            "--rate", "0", "--out", out, "--json"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no caption" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.fixture(scope="module")
def bag_640(tmp_path_factory):
    from mobilevlm_ros.tools.demo_bag import record

    return record(str(tmp_path_factory.mktemp("bag640") / "bag"), frames=4, width=640, height=480)


@pytest.mark.parametrize("node_qos, profile", [("auto", "replay's own"), ("auto", "fast dds defaults"),
                                               ("best_effort", "replay's own")])
def test_replay_into_a_node_started_on_its_own_captions_every_640x480_frame(node_with_listener, bag_640,
                                                                             tmp_path, node_qos, profile):
    """mobilevlm-replay --node, lock-step, into a node in its own process. Default parameters: with the
    replay's own large-frame profile, and with Fast DDS's defaults (a user's profile that changes
    nothing), where every frame arrives because the node follows the replay to reliable. A node fixed at
    best_effort: every frame arrives only because the replay, the writer, loads the large-frame profile."""
    node, _ = node_with_listener(cameras=["front"], qos_reliability=node_qos)
    env = environment(profile=os.path.join(FIXTURES, "fastdds_defaults.xml")) if profile != "replay's own" \
        else environment()
    summary = replay_into(node, bag_640, str(tmp_path / "out"), env)
    assert summary["frames"] == 4 and summary["captions"] == 4, summary
    subscribed = "reliable" if node_qos == "auto" else "best_effort"
    assert f"subscribing to /{node.ns}/front/image_raw {subscribed}" in node.log
