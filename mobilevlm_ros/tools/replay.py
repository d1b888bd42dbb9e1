"""mobilevlm-replay: play a bag into the VLM node over real topics and record what it says.

  mobilevlm-replay IN_BAG --engine DIR --out OUT_BAG [--rate 1.0] [--questions FILE.json] [--annotated]
                   [--frames-png STRIP.png] [--compare EXPECTED_BAG]

Camera frames (sensor_msgs/Image or CompressedImage topics of the bag) are published with their
recorded timing (`--rate 2` twice as fast; `--rate 0` as fast as the node keeps up: each frame is
published once the previous one has been captioned, so every frame gets a caption). Questions
come from the bag's /vlm/questions topic (std_msgs/String, JSON {"camera", "question", "truth"?})
or a side file (JSON list of {"t": seconds from the start, "camera", "question"}), and are asked
through the node's ~/ask service. Captions, answers (and annotated frames with --annotated) are
written to OUT_BAG with our message definitions embedded. `--compare EXPECTED_BAG` reports text
changes and box IoU against an earlier run and exits 1 past the tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAPTION_TYPE, ANSWER_TYPE = "mobilevlm_ros/msg/Caption", "mobilevlm_ros/msg/GroundedAnswer"


@dataclass
class Event:
    t_ns: int  # bag time
    kind: str  # "frame" | "question"
    camera: str
    data: object  # CDR bytes (frame) or the question dict
    compressed: bool = False


def camera_name(topic: str) -> str:
    """/front/image_raw -> front; /cam/color/image_raw/compressed -> cam/color; /x/image -> x_image."""
    name = re.sub(r"/image_raw(/compressed)?$", "", topic).strip("/")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*", name):
        name = "cam_" + re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_")
    return name


def load_events(bag: str, questions_file: Optional[str] = None) -> tuple:
    """Frames and questions of a bag (plus a side file), in time order; and topic -> camera."""
    from ..ros import bags

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


@dataclass
class Recorder:
    """What the node said, as (topic, type, time, CDR bytes), plus the decoded captions/answers."""

    records: List[tuple] = field(default_factory=list)
    captions: List[object] = field(default_factory=list)
    caption_stamps: set = field(default_factory=set)  # source stamps captioned so far (--rate 0 waits on them)
    answers: List[tuple] = field(default_factory=list)  # (question dict, GroundedAnswer)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic, msgtype, data):
        with self.lock:
            self.records.append((topic, msgtype, time.time_ns(), bytes(data)))


def _stamp(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def _box_tuple(b) -> tuple:
    """A BoundingBox message's (x1, y1, x2, y2) in pixels."""
    return (b.center_x - b.size_x / 2, b.center_y - b.size_y / 2, b.center_x + b.size_x / 2, b.center_y + b.size_y / 2)


def _print_answer(q: dict, a) -> None:
    boxes = "".join(f" [{b.label or '-'}: " + ",".join(f"{v:.0f}" for v in _box_tuple(b)) + " px]" for b in a.boxes)
    print(f"  Q ({q.get('camera') or '-'}): {q['question']}\n  A: {a.text}{boxes}", flush=True)


def replay(in_bag: str, out_bag: str, engine: Optional[str], rate: float = 1.0, questions: Optional[str] = None,
           annotated: bool = False, max_new_tokens: int = 48, storage: str = "sqlite3", quiet: bool = False) -> dict:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CompressedImage, Image

    from ..ros.bags import BagWriter
    from ..msg import Caption
    from ..ros.node import VLMNode
    from ..srv import Ask

    events, image_topics = load_events(in_bag, questions)
    cameras = sorted(set(image_topics.values()))
    transports = {cam: "raw" for cam in cameras}
    for e in events:
        if e.kind == "frame" and e.compressed:
            transports[e.camera] = "compressed"
    context = rclpy.Context()  # our own: the caller may have rclpy running already
    rclpy.init(context=context)
    rec = Recorder()
    node = None
    try:
        if engine:
            node = VLMNode(context=context, parameter_overrides=[
                Parameter("engine_dir", value=engine), Parameter("cameras", value=cameras),
                Parameter("transports", value=[transports[c] for c in cameras]),
                Parameter("caption_rate_hz", value=30.0), Parameter("max_new_tokens", value=max_new_tokens),
                Parameter("qos_reliability", value="reliable"), Parameter("qos_depth", value=10),
                Parameter("max_queue", value=8)])
            if (node.trigger_configure() != TransitionCallbackReturn.SUCCESS
                    or node.trigger_activate() != TransitionCallbackReturn.SUCCESS):
                raise RuntimeError(f"the VLM node could not start on engine {engine} (see the log above)")
        player = rclpy.create_node("mobilevlm_replay", context=context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {cam: player.create_publisher(CompressedImage if transports[cam] == "compressed" else Image,
                                             f"/{cam}/image_raw" + ("/compressed" if transports[cam] == "compressed" else ""),
                                             reliable) for cam in cameras}
        caption_seen = threading.Condition()

        def on_caption(raw):
            rec.add("/vlm/caption", CAPTION_TYPE, raw)
            c = deserialize_message(raw, Caption)
            with caption_seen:
                rec.captions.append(c)
                rec.caption_stamps.add(_stamp(c.header))
                caption_seen.notify_all()
            if not quiet:
                print(f"[{c.header.stamp.sec}.{c.header.stamp.nanosec:09d}] {c.camera}: {c.text}", flush=True)

        player.create_subscription(Caption, "/vlm/caption", on_caption, 50, raw=True)
        if annotated:
            player.create_subscription(Image, "/vlm/annotated",
                                       lambda raw: rec.add("/vlm/annotated", "sensor_msgs/msg/Image", raw), 50, raw=True)
        ask = player.create_client(Ask, "/vlm/ask")
        executor = MultiThreadedExecutor(num_threads=16, context=context)
        if node is not None:
            executor.add_node(node)
        executor.add_node(player)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        if not ask.wait_for_service(timeout_sec=30):
            raise RuntimeError("no VLM node answers on /vlm/ask (is it running? did the engine load?)")
        for cam, pub in pubs.items():
            _wait(lambda: pub.get_subscription_count() > 0, 30, f"the node to subscribe to camera {cam}")
        if annotated:
            _wait(lambda: node is None or node.annotated_pub.get_subscription_count() > 0, 10, "annotated subscription")

        pending, timing_errors = [], []
        t0_bag, t0_wall = events[0].t_ns if events else 0, time.monotonic()

        for e in events:
            if rate > 0:  # recorded timing, scaled
                due = t0_wall + (e.t_ns - t0_bag) / 1e9 / rate
                time.sleep(max(0.0, due - time.monotonic()))
                if e.kind == "frame":
                    timing_errors.append(time.monotonic() - due)
            if e.kind == "frame":
                msg_cls = CompressedImage if e.compressed else Image
                stamp = _stamp(deserialize_message(e.data, msg_cls).header)
                pubs[e.camera].publish(e.data)  # the recorded bytes, as they are
                if rate == 0:
                    with caption_seen:
                        if not caption_seen.wait_for(lambda: stamp in rec.caption_stamps, timeout=120):
                            print(f"warning: no caption for the frame stamped {stamp} within 120 s", file=sys.stderr)
            else:
                q = e.data
                req = Ask.Request(question=q["question"], camera=q.get("camera", ""),
                                  max_new_tokens=int(q.get("max_new_tokens", 0)))
                fut = ask.call_async(req)
                pending.append((q, fut))
                if rate == 0:
                    _wait(fut.done, 300, "an answer")
            for q, fut in [p for p in pending if p[1].done()]:
                pending.remove((q, fut))
                _record_answer(rec, q, fut.result(), serialize_message, quiet)
        for q, fut in pending:
            _wait(fut.done, 300, "the last answers")
            _record_answer(rec, q, fut.result(), serialize_message, quiet)
        time.sleep(0.5)  # the last caption may still be on its way
        executor.shutdown()
    finally:
        if node is not None and node.worker is not None:
            node.worker.stop()
        rclpy.try_shutdown(context=context)

    with BagWriter(out_bag, storage) as bag:
        for topic, msgtype, ts, data in sorted(rec.records, key=lambda r: r[2]):
            bag.write(topic, msgtype, ts, data)
    return _summary(events, rec, timing_errors)


def _record_answer(rec: Recorder, q: dict, resp, serialize, quiet: bool) -> None:
    if not resp.success:
        print(f"  Q: {q['question']}\n  error: {resp.error}", file=sys.stderr, flush=True)
        return
    rec.add("/vlm/answers", ANSWER_TYPE, serialize(resp.answer))
    rec.answers.append((q, resp.answer))
    if not quiet:
        _print_answer(q, resp.answer)


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _summary(events: List[Event], rec: Recorder, timing_errors: List[float]) -> dict:
    from ..runtime.grounding import box_iou as iou

    frames = sum(e.kind == "frame" for e in events)
    grounded, grounded_ok, counted, counted_ok = 0, 0, 0, 0
    for q, a in rec.answers:
        truth = q.get("truth") or {}
        if "box" in truth:
            grounded += 1
            if a.boxes:
                grounded_ok += iou(_box_tuple(a.boxes[0]), truth["box"]) >= 0.5
        elif "answer" in truth:
            counted += 1
            counted_ok += a.text.strip().rstrip(".").lower() == str(truth["answer"]).lower()
    return {"frames": frames, "captions": len(rec.captions), "answers": len(rec.answers),
            "grounding_iou50": [grounded_ok, grounded], "counting": [counted_ok, counted],
            "timing_error_max_s": max((abs(t) for t in timing_errors), default=0.0)}


# -- comparing two runs ------------------------------------------------------------------------
def compare(actual_bag: str, expected_bag: str, min_iou: float = 0.5, max_text_changes: int = 0) -> dict:
    """Captions paired by (camera, source stamp), answers by (question, source stamp)."""
    from ..ros import bags
    from ..runtime.grounding import box_iou as iou

    def load(path):
        caps, answers = {}, {}
        for topic, msgtype, ts, raw in bags.read(path, {"/vlm/caption", "/vlm/answers"}):
            m = bags.deserialize(msgtype, raw)
            if msgtype == CAPTION_TYPE:
                caps[(m.camera, _stamp(m.header))] = m
            else:
                answers[(m.question, _stamp(m.header))] = m
        return caps, answers

    (ca, aa), (ce, ae) = load(actual_bag), load(expected_bag)
    changes, ious, missing = [], [], []
    for kind, got, want in (("caption", ca, ce), ("answer", aa, ae)):
        for key, w in want.items():
            g = got.get(key)
            if g is None:
                missing.append(f"{kind} {key}")
                continue
            if g.text != w.text:
                changes.append({"kind": kind, "key": str(key), "expected": w.text, "actual": g.text})
            if kind == "answer":
                if len(g.boxes) != len(w.boxes):
                    ious.append(0.0)
                ious.extend(iou(_box_tuple(x), _box_tuple(y)) for x, y in zip(g.boxes, w.boxes))
    report = {"compared": len(ce) + len(ae), "text_changes": changes, "missing": missing,
              "min_box_iou": min(ious, default=1.0), "boxes_compared": len(ious)}
    report["ok"] = (len(changes) <= max_text_changes and not missing and report["min_box_iou"] >= min_iou)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-replay", description=__doc__.split("\n\n")[0])
    p.add_argument("bag", help="input bag (rosbag2 directory, sqlite3 or MCAP)")
    p.add_argument("--engine", help="engine directory: start a VLM node here (else use a running node /vlm)")
    p.add_argument("--out", required=True, help="output bag to create")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed; 0: as fast as the node keeps up")
    p.add_argument("--questions", help="JSON side file of questions: [{t, camera, question}]")
    p.add_argument("--annotated", action="store_true", help="also record /vlm/annotated frames")
    p.add_argument("--frames-png", metavar="PNG", help="write the annotated frames as one strip image")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--compare", metavar="EXPECTED_BAG", help="compare with an earlier run; exit 1 past tolerance")
    p.add_argument("--min-iou", type=float, default=0.5, help="--compare: lowest acceptable box IoU")
    p.add_argument("--max-text-changes", type=int, default=0, help="--compare: text changes tolerated")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    if a.rate < 0:
        p.error("--rate must be >= 0")
    if os.path.exists(a.out):
        if not a.overwrite:
            print(f"mobilevlm-replay: error: {a.out} exists (use --overwrite to replace it)", file=sys.stderr)
            return 1
        shutil.rmtree(a.out)
    try:
        summary = replay(a.bag, a.out, a.engine, a.rate, a.questions, a.annotated or bool(a.frames_png),
                         a.max_new_tokens, a.storage, quiet=a.json)
        if a.frames_png:
            summary["frames_png"] = write_strip(a.out, a.frames_png)
        if a.compare:
            summary["compare"] = compare(a.out, a.compare, a.min_iou, a.max_text_changes)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"mobilevlm-replay: error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        g, c = summary["grounding_iou50"], summary["counting"]
        print(f"\n{summary['frames']} frames, {summary['captions']} captions, {summary['answers']} answers; "
              f"grounding IoU>=0.5 {g[0]}/{g[1]}, counting {c[0]}/{c[1]}; "
              f"timing error max {summary['timing_error_max_s'] * 1e3:.0f} ms; wrote {a.out}")
        if a.compare:
            r = summary["compare"]
            print(f"compare with {a.compare}: {len(r['text_changes'])} text changes, {len(r['missing'])} missing, "
                  f"min box IoU {r['min_box_iou']:.2f} -> {'OK' if r['ok'] else 'DIFFERENT'}")
            for ch in r["text_changes"][:10]:
                print(f"  {ch['kind']} {ch['key']}: {ch['expected']!r} -> {ch['actual']!r}")
    return 0 if not a.compare or summary["compare"]["ok"] else 1


def write_strip(bag: str, png: str, columns: int = 4, limit: int = 16) -> str:
    """The recorded annotated frames, tiled into one PNG."""
    import numpy as np
    from PIL import Image as PILImage

    from ..ros import bags
    from ..ros.bridge import imgmsg_to_rgb

    frames = [imgmsg_to_rgb(bags.deserialize(t, raw)) for _, t, _, raw in bags.read(bag, {"/vlm/annotated"})][:limit]
    if not frames:
        raise ValueError(f"{bag}: no annotated frames recorded")
    h, w = frames[0].shape[:2]
    frames = [f if f.shape[:2] == (h, w) else np.array(PILImage.fromarray(f).resize((w, h))) for f in frames]
    rows = (len(frames) + columns - 1) // columns
    sheet = np.zeros((rows * h, min(columns, len(frames)) * w, 3), np.uint8)
    for i, f in enumerate(frames):
        sheet[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = f
    PILImage.fromarray(sheet).save(png)
    return png


if __name__ == "__main__":
    sys.exit(main())
