"""mobilevlm-bench --node: the VLM node under a fixed load, measured from outside, as a robot feels it.

  mobilevlm-bench --node [ENGINE_DIR] [--cameras 1 4] [--format raw640 jpeg720] [--duration 20]
                  [--fps 30] [--question-rate 0.5] [--caption-rate 2] [--change-threshold 0]
                  [--max-batch 1 4]

For each (cameras, format, max_batch) it starts the node as its own process (vlm_node, in namespace /bench),
publishes camera frames at --fps from N cameras (640x480 rgb8, or 1280x720 JPEG) for --duration
seconds while asking questions through the ~/ask service at --question-rate (round robin over the
cameras), and reports per camera: caption latency percentiles (frame stamp to caption received),
achieved caption rate, frames received and dropped (the node's /diagnostics), answer latency
percentiles, the aggregate decode rate (tokens of all rows per second of batched decoder steps,
from the node's /diagnostics counters), and for the node process its CPU time and RSS at start and
end. A second run of the same load with captions and questions off gives the node's CPU time
outside inference (receiving and checking frames). Frames cycle through 8 different scenes so
that, with change_threshold 0 (the default here), every caption runs inference.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List

import numpy as np

FORMATS = {"raw640": (640, 480, "raw"), "jpeg720": (1280, 720, "compressed")}
NAMESPACE = "/bench"


def _percentiles(values: List[float]) -> Dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    q = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}


def _frames(fmt: str, count: int = 8) -> list:
    """`count` messages' payloads of different demo scenes: rgb8 bytes or JPEG bytes."""
    import cv2

    from ...demo import scenes

    width, height, transport = FORMATS[fmt]
    out = []
    for i in range(count):
        rgb = scenes.make_scene(30_000_000 + i, width, height).image
        if transport == "raw":
            out.append(rgb.tobytes())
        else:
            ok, jpg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            out.append(jpg.tobytes())
    return out


def _start_node(engine: str, cameras: List[str], transport: str, caption_rate: float,
                change_threshold: float, max_batch: int):
    args = [sys.executable, "-m", "mobilevlm_ros.ros.node", "--ros-args", "-r", f"__ns:={NAMESPACE}",
            "-p", f"engine_dir:={engine}", "-p", f"cameras:=[{','.join(cameras)}]",
            "-p", f"transports:=[{transport}]", "-p", f"caption_rate_hz:={caption_rate}",
            "-p", f"change_threshold:={change_threshold}", "-p", "max_queue:=4",
            "-p", f"max_batch:={max_batch}",
            "-p", "diagnostics_period_s:=0.5"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_load(engine: str, n_cameras: int, fmt: str, duration: float, fps: float, question_rate: float,
             caption_rate: float, change_threshold: float, max_batch: int = 1) -> dict:
    """One measured run; returns per-camera and node-process figures."""
    import psutil
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from ...msg import Caption
    from ...srv import Ask

    width, height, transport = FORMATS[fmt]
    cameras = [f"cam{i}" for i in range(n_cameras)]
    payloads = _frames(fmt)
    proc = _start_node(engine, cameras, transport, caption_rate, change_threshold, max_batch)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("mobilevlm_node_bench", context=context)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    lock = threading.Lock()
    caption_latency: Dict[str, List[float]] = {c: [] for c in cameras}
    caption_count: Dict[str, int] = {c: 0 for c in cameras}
    diagnostics: Dict[str, str] = {}
    measuring = threading.Event()

    def on_caption(msg) -> None:
        now = time.time()
        if measuring.is_set() and msg.camera in caption_latency:
            with lock:
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                caption_latency[msg.camera].append(now - stamp)
                caption_count[msg.camera] += 1

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name.startswith(f"{NAMESPACE}/vlm"):
                with lock:
                    diagnostics.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(Caption, f"{NAMESPACE}/vlm/caption", on_caption, 50)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    msg_type = CompressedImage if transport == "compressed" else Image
    suffix = "/compressed" if transport == "compressed" else ""
    pubs = {c: node.create_publisher(msg_type, f"{NAMESPACE}/{c}/image_raw{suffix}",
                                     qos_profile_sensor_data) for c in cameras}
    ask = node.create_client(Ask, f"{NAMESPACE}/vlm/ask")
    try:
        if not ask.wait_for_service(timeout_sec=120):
            log = proc.stderr.read()[-2000:] if proc.poll() is not None else ""
            raise RuntimeError(f"the node did not come up: {log}")
        end = time.monotonic() + 30
        while any(p.get_subscription_count() == 0 for p in pubs.values()) and time.monotonic() < end:
            time.sleep(0.05)
        node_ps = psutil.Process(proc.pid)

        def publish_frames(i: int) -> None:
            stamp = time.time()
            for c in cameras:
                m = msg_type()
                m.header.stamp.sec, m.header.stamp.nanosec = int(stamp), int((stamp % 1) * 1e9)
                m.header.frame_id = f"{c}_optical_frame"
                if transport == "compressed":
                    m.format, m.data = "jpeg", payloads[i % len(payloads)]
                else:
                    m.height, m.width, m.encoding, m.step = height, width, "rgb8", 3 * width
                    m.data = payloads[i % len(payloads)]
                pubs[c].publish(m)

        # Warm-up: the same load for 3 s, so onnxruntime's and DDS's buffers exist before "start".
        warm_end, warm_frames = time.monotonic() + 3.0, 0
        while time.monotonic() < warm_end:
            publish_frames(0)
            warm_frames += 1
            time.sleep(1.0 / fps)
        rss_start = node_ps.memory_info().rss / 2**20
        cpu_start = sum(node_ps.cpu_times()[:2])
        with lock:
            decode_start = (int(diagnostics.get("decode_tokens", 0)), float(diagnostics.get("decode_s", 0.0)))
        answer_latency: List[float] = []
        pending = []
        measuring.set()
        t0 = time.monotonic()
        next_frame, next_question, i, q = t0, t0 + 1.0, 0, 0
        while time.monotonic() - t0 < duration:
            now = time.monotonic()
            if now >= next_frame:
                publish_frames(i)
                i += 1
                next_frame += 1.0 / fps
            if question_rate > 0 and now >= next_question:
                request = Ask.Request(question="How many objects are there?", camera=cameras[q % n_cameras])
                pending.append((time.monotonic(), ask.call_async(request)))
                q += 1
                next_question += 1.0 / question_rate
            for sent, fut in [p for p in pending if p[1].done()]:
                pending.remove((sent, fut))
                if fut.result().success:
                    answer_latency.append(time.monotonic() - sent)
            time.sleep(max(0.0, min(next_frame, next_question) - time.monotonic()))
        elapsed = time.monotonic() - t0
        measuring.clear()
        end = time.monotonic() + 60
        while pending and time.monotonic() < end:
            for sent, fut in [p for p in pending if p[1].done()]:
                pending.remove((sent, fut))
            time.sleep(0.05)
        cpu_s = sum(node_ps.cpu_times()[:2]) - cpu_start
        rss_end = node_ps.memory_info().rss / 2**20
        time.sleep(1.0)  # one more diagnostics period
        with lock:
            tokens = int(diagnostics.get("decode_tokens", 0)) - decode_start[0]
            decode_s = float(diagnostics.get("decode_s", 0.0)) - decode_start[1]
            per_camera = {c: {"caption_latency_s": _percentiles(caption_latency[c]),
                              "captions_per_s": caption_count[c] / elapsed,
                              "frames_received": int(diagnostics.get(f"{c}.frames_received", 0)),
                              "frames_dropped": int(diagnostics.get(f"{c}.frames_dropped", 0)),
                              "frames_published": warm_frames + i} for c in cameras}
        # Frame counts include the warm-up (the node's counters run from its start).
        # The counters are read when /diagnostics comes (every 0.5 s): the window is the run's to that.
        return {"cameras": n_cameras, "format": fmt, "max_batch": max_batch, "duration_s": elapsed,
                "per_camera": per_camera,
                "captions_per_s": sum(c["captions_per_s"] for c in per_camera.values()),
                "decode_tokens": tokens, "decode_tok_s": tokens / decode_s if decode_s > 0 else 0.0,
                "answers": len(answer_latency), "answer_latency_s": _percentiles(answer_latency),
                "node_cpu_s_per_s": cpu_s / elapsed, "rss_mb_start": rss_start, "rss_mb_end": rss_end}
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def table(rows: List[dict]) -> str:
    lines = ["cams format   batch  caption p50/p90/p99 s  captions/s (all cams)  decode tok/s (all rows)  "
             "sent  recv  drop  answers p50/p90 s  node CPU (of 1 core)  outside inference  "
             "RSS start->end MB"]
    for r in rows:
        cams = r["per_camera"]
        lat = statistics.mean(c["caption_latency_s"]["p50"] for c in cams.values())
        lat90 = statistics.mean(c["caption_latency_s"]["p90"] for c in cams.values())
        lat99 = max(c["caption_latency_s"]["p99"] for c in cams.values())
        sent = sum(c["frames_published"] for c in cams.values())
        recv = sum(c["frames_received"] for c in cams.values())
        drop = sum(c["frames_dropped"] for c in cams.values())
        a = r["answer_latency_s"]
        lines.append(f"{r['cameras']:>4} {r['format']:8} {r['max_batch']:5d}  "
                     f"{lat:6.2f}/{lat90:5.2f}/{lat99:5.2f}     {r['captions_per_s']:20.2f}  "
                     f"{r['decode_tok_s']:23.1f}  {sent:4d}  {recv:4d}  {drop:4d}  "
                     f"{a['p50']:6.2f}/{a['p90']:5.2f} (n={r['answers']})  "
                     f"{r['node_cpu_s_per_s'] * 100:8.0f}%          "
                     f"{r['ingest_cpu_s_per_s'] * 100:5.0f}%       "
                     f"{r['rss_mb_start']:.0f} -> {r['rss_mb_end']:.0f}")
    return "\n".join(lines)


def gains(rows: List[dict]) -> str:
    """Each batched row against the max_batch 1 row of the same cameras and format (same run)."""
    base = {(r["cameras"], r["format"]): r for r in rows if r["max_batch"] == 1}
    lines = []
    for r in rows:
        b = base.get((r["cameras"], r["format"]))
        if r["max_batch"] == 1 or b is None or not b["captions_per_s"] or not b["decode_tok_s"]:
            continue
        lines.append(f"{r['cameras']} camera(s), {r['format']}, max_batch {r['max_batch']} vs 1: captions/s "
                     f"{r['captions_per_s'] / b['captions_per_s']:.2f}x, aggregate decode tok/s "
                     f"{r['decode_tok_s'] / b['decode_tok_s']:.2f}x, RSS {r['rss_mb_end']:.0f} vs "
                     f"{b['rss_mb_end']:.0f} MB")
    return "\n".join(lines)


def main(a) -> int:
    """Called by mobilevlm-bench --node with its parsed arguments."""
    from ...ros.share import share_path

    engine = os.path.abspath(a.engine or share_path("engines/demo"))
    rows = []
    for n in a.cameras:
        for fmt in a.format:
            for max_batch in a.max_batch:
                print(f"node bench: {n} camera(s), {fmt}, max_batch {max_batch}, {a.fps:g} Hz, "
                      f"{a.duration:g} s ...", flush=True)
                row = run_load(engine, n, fmt, a.duration, a.fps, a.question_rate, a.caption_rate,
                               a.change_threshold, max_batch)
                ingest = run_load(engine, n, fmt, min(a.duration, 10.0), a.fps, 0.0, 0.0, a.change_threshold,
                                  max_batch)
                row["ingest_cpu_s_per_s"] = ingest["node_cpu_s_per_s"]  # captions and questions off
                rows.append(row)
    print(table(rows))
    print(gains(rows))
    if a.json:
        with (sys.stdout if a.json == "-" else open(a.json, "w")) as f:
            json.dump(rows, f, indent=2)
    return 0
