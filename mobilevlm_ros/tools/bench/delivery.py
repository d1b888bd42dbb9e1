"""mobilevlm-bench --delivery: which raw frames from a camera in another process reach the node.

  mobilevlm-bench --delivery [ENGINE_DIR] [--sizes 640x480 1280x720 1920x1080] [--rates 10 30]
                  [--seconds 5] [--profiles default large_frames]

For each profile (`default`: Fast DDS as installed; `large_frames`: config/fastdds_large_frames.xml
loaded by the camera's process and the node's; `large_frames_node_only`, `large_frames_camera_only`:
by one of them) it starts the node as its own process with its default parameters (qos_reliability
auto, captions at 0.5 Hz on the demo engine: the load of a robot), then for each size, rate and
publisher reliability a synthetic camera in a third process (tools/bench/camera.py) publishing
`--seconds` of rgb8 frames. Counted from the node's /diagnostics: frames received, frames DDS reported
lost (message-lost events), what the node subscribed with, and captions made meanwhile.
"Received" is what reached the node's callback; at a rate above what the node takes, the rest were
replaced in its depth-1 reader queue (latest frame wins), not lost in transport.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from ...ros.dds_profile import LARGE_FRAMES_PROFILE, profile_environment

NAMESPACE = "/delivery"
CAMERA = "front"
DIAGNOSTICS_PERIOD_S = 0.5


# Which processes load config/fastdds_large_frames.xml: (the node's, the camera's).
PROFILES = {"default": (False, False), "large_frames": (True, True),
            "large_frames_node_only": (True, False), "large_frames_camera_only": (False, True)}


def profile_env(with_profile: bool) -> Dict[str, str]:
    """This process's environment, with the large-frame profile loaded or without any profile."""
    from ...ros.share import share_path

    env = {k: v for k, v in os.environ.items() if k not in profile_environment("")}
    if with_profile:
        env.update(profile_environment(share_path(LARGE_FRAMES_PROFILE)))
    return env


def start_node(engine: Optional[str], env: Dict[str, str], namespace: str = NAMESPACE, **params):
    """`python -m mobilevlm_ros.ros.node` in `namespace` with camera `front` and the default parameters
    (plus `params`); its log goes to this process's output."""
    values = dict(cameras=f"[{CAMERA}]", diagnostics_period_s=DIAGNOSTICS_PERIOD_S, **params)
    if engine:
        values["engine_dir"] = engine
    args = [sys.executable, "-m", "mobilevlm_ros.ros.node", "--ros-args", "-r", f"__ns:={namespace}"]
    for k, v in values.items():
        args += ["-p", f"{k}:={v}"]
    return subprocess.Popen(args, env=env)


def run_camera(topic: str, size: str, rate: float, frames: int, reliability: str, env: Dict[str, str],
               settle: float = 2.0, timeout: float = 120.0) -> dict:
    """The synthetic camera as its own process, to the end; its JSON line."""
    args = [sys.executable, "-m", "mobilevlm_ros.tools.bench.camera", topic, "--size", size, "--rate",
            str(rate), "--frames", str(frames), "--reliability", reliability, "--settle", str(settle)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"camera failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Diagnostics:
    """The newest /diagnostics values of the node `name` (fully qualified), in this process."""

    def __init__(self, name: str, domain_id: Optional[int] = None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self.name, self.values, self.count = name, {}, 0
        self._lock = threading.Lock()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("delivery_diagnostics", context=self.context)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on(self, msg) -> None:
        for status in msg.status:
            if status.name.split(": ")[0] == self.name:
                with self._lock:
                    self.values = {kv.key: kv.value for kv in status.values}
                    self.count += 1

    def fresh(self, timeout: float = 60.0) -> dict:
        """Values of a report that arrived after this call."""
        with self._lock:
            n = self.count
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self.count > n + 1:  # n + 1: one whole period after the call
                    return dict(self.values)
            time.sleep(0.02)
        raise RuntimeError(f"no /diagnostics from {self.name} within {timeout:g} s")

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _count(values: dict, key: str) -> int:
    return int(values.get(f"{CAMERA}.{key}", 0))


def measure(engine: Optional[str], sizes: List[str], rates: List[float], seconds: float,
            profiles: List[str], reliabilities=("reliable", "best_effort"), node_qos: str = "") -> List[dict]:
    """One row per (profile, size, rate, publisher reliability); `node_qos`: the node's qos_reliability
    ('' for its default)."""
    rows = []
    topic = f"{NAMESPACE}/{CAMERA}/image_raw"
    for profile in profiles:
        node_env, env = (profile_env(p) for p in PROFILES[profile])
        node = start_node(engine, node_env, **({"qos_reliability": node_qos} if node_qos else {}))
        diagnostics = Diagnostics(f"{NAMESPACE}/vlm")
        try:
            diagnostics.fresh(timeout=120)
            for size in sizes:
                for rate in rates:
                    for reliability in reliabilities:
                        before = diagnostics.fresh()
                        frames = max(1, int(round(rate * seconds)))
                        print(f"delivery: {profile}, {size} rgb8, {rate:g} Hz, {reliability} publisher, "
                              f"{frames} frames ...", flush=True)
                        result: dict = {}
                        seen: dict = {}

                        def camera() -> None:
                            result.update(run_camera(topic, size, rate, frames, reliability, env))

                        thread = threading.Thread(target=camera)
                        thread.start()
                        while thread.is_alive():  # what the node subscribed with while the camera ran
                            thread.join(DIAGNOSTICS_PERIOD_S)
                            if diagnostics.values.get(f"{CAMERA}.publishers") not in (None, "0"):
                                seen = dict(diagnostics.values)
                        after = diagnostics.fresh()
                        rows.append({
                            "profile": profile, "size": size, "rate_hz": rate, "publisher": reliability,
                            "subscribed": seen.get(f"{CAMERA}.qos_reliability", "?"),
                            "sent": result.get("published", 0),
                            "received": _count(after, "frames_received") - _count(before, "frames_received"),
                            "lost": _count(after, "frames_lost") - _count(before, "frames_lost"),
                            "captions": (_count(after, "captions") + _count(after, "captions_reused")
                                         - _count(before, "captions") - _count(before, "captions_reused"))})
        finally:
            diagnostics.close()
            node.terminate()
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
    return rows


def table(rows: List[dict]) -> str:
    lines = ["| profile | frame | rate | publisher | node subscribed | sent | received | lost (DDS) "
             "| captions |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['profile']} | {r['size']} rgb8 | {r['rate_hz']:g} Hz | {r['publisher']} | "
                     f"{r['subscribed']} | {r['sent']} | {r['received']} | {r['lost']} | {r['captions']} |")
    return "\n".join(lines)


def main(a) -> int:
    """Called by mobilevlm-bench --delivery with its parsed arguments."""
    rows = measure(a.engine, a.sizes, a.rates, a.seconds, a.profiles, a.publishers, a.node_qos)
    print(table(rows))
    if a.json:
        with (sys.stdout if a.json == "-" else open(a.json, "w")) as f:
            json.dump(rows, f, indent=2)
    return 0
