"""One (bag, engine) pair: the bag replayed in lock-step through a VLM node started in this process,
its output bag written, its per-frame records returned. The same function runs as a Ray task and in
the serial executor; it is a plain function of its arguments (a retried task redoes it from scratch).

Records are plain JSON-able data, so they travel from Ray workers and are kept as records.json:
  {"bag", "engine", "engine_sha256", "frames": [{"camera", "stamp_ns", "topic"}],
   "captions": [{"camera", "stamp_ns", "text", "reused"}],
   "answers": [{"camera", "stamp_ns", "question", "text", "boxes": [{"phrase", "box": [x1, y1, x2, y2]}],
                "answer_type", "value_json", "confidence"}],
   "summary": the replay's summary, "wall_s"}
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

from ..runtime import manifest as engine_manifest

OUTPUT_BAG = "bag"  # inside the pair's folder
RUNNING = "running.json"  # while a process works on the pair: which one (host, pid)


def engine_identity(engine: str) -> str:
    """The sha256 of an engine's manifest (which holds every file's sha256): one engine, one value."""
    return engine_manifest.sha256(os.path.join(engine, engine_manifest.NAME))


def replay_pair(bag: str, engine: str, pair_dir: str, domain_id: int, threads: int = 0,
                max_new_tokens: int = 48) -> dict:
    """Replay `bag` through `engine` in ROS domain `domain_id` (discovery on this host only), the
    output bag to <pair_dir>/bag; the records. Errors (an unreadable bag, no camera topic, a bad
    engine) raise: the caller reports the bag and goes on."""
    from ..ros.replay import replay

    # Isolation from every other task: its own domain, and DDS discovery kept on this host (rcl reads
    # both at init, in this process).
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    out_bag = os.path.join(pair_dir, OUTPUT_BAG)
    os.makedirs(pair_dir, exist_ok=True)
    if os.path.exists(out_bag):  # a killed attempt's partial bag
        shutil.rmtree(out_bag)
    with open(os.path.join(pair_dir, RUNNING), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, f)
    start = time.monotonic()
    summary = replay(bag, out_bag, engine, rate=0, max_new_tokens=max_new_tokens, quiet=True,
                     domain_id=domain_id, threads=threads)
    records = read_records(bag, out_bag)
    records.update(engine=os.path.abspath(engine), engine_sha256=engine_identity(engine),
                   summary=summary, wall_s=round(time.monotonic() - start, 3))
    os.remove(os.path.join(pair_dir, RUNNING))
    return records


def read_records(in_bag: str, out_bag: str) -> dict:
    """The input bag's frames and the output bag's captions and answers, as plain data."""
    from ..ros import bags
    from ..ros.player import load_events, stamp_ns
    from ..ros.recorder import ANSWER_TYPE, CAPTION_TYPE
    from ..ros.report import box_corners

    events, image_topics = load_events(in_bag)
    topic_of = {camera: topic for topic, camera in image_topics.items()}
    frames = []
    for e in events:
        if e.kind == "frame":
            msg = bags.deserialize("sensor_msgs/msg/CompressedImage" if e.compressed
                                   else "sensor_msgs/msg/Image", e.data)
            frames.append({"camera": e.camera, "stamp_ns": stamp_ns(msg.header), "topic": topic_of[e.camera]})
    captions, answers = [], []
    wanted = {t for t, ty in bags.topics(out_bag).items() if ty in (CAPTION_TYPE, ANSWER_TYPE)}
    for _, msgtype, _, raw in bags.read(out_bag, wanted):
        m = bags.deserialize(msgtype, raw)
        if msgtype == CAPTION_TYPE:
            captions.append({"camera": m.camera, "stamp_ns": stamp_ns(m.header), "text": m.text,
                             "reused": bool(m.reused)})
        else:
            boxes = [{"phrase": b.label, "box": [round(v, 2) for v in box_corners(b)]} for b in m.boxes]
            answers.append({"camera": m.camera, "stamp_ns": stamp_ns(m.header), "question": m.question,
                            "text": m.text, "boxes": boxes, "answer_type": m.answer_type or "text",
                            "value_json": m.value_json, "confidence": round(float(m.confidence), 4)})
    return {"bag": os.path.abspath(in_bag), "frames": frames, "captions": captions, "answers": answers}
