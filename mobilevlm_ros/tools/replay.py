"""mobilevlm-replay: play a bag into the VLM node over real topics and record what it says.

  mobilevlm-replay IN_BAG --out OUT_BAG [--engine DIR] [--node /vlm] [--rate 1.0] [--questions FILE.json]
                   [--camera-topic CAMERA=TOPIC ...] [--annotated] [--frames-png STRIP.png]
                   [--compare EXPECTED_BAG]

`--node NAME` is the fully qualified name of the VLM node (default /vlm; e.g. /robot1/vlm for a node
started with the launch file's namespace:=robot1). With `--engine DIR` the replay starts that node
itself, in this process, under that name; without it, it talks to a running node of that name.
Camera frames (sensor_msgs/Image or CompressedImage topics of the bag) are published to the node's
camera inputs: the topics a running node reports on /diagnostics (so its remaps are followed), or
`--camera-topic front=/robot1/camera/color/image_raw`, else <namespace of NAME>/<camera>/image_raw
(or .../image_raw/compressed); with their recorded timing (`--rate 2` twice as fast; `--rate 0` as
fast as the node keeps up: each frame is published once the previous one has been captioned, so every
frame gets a caption). Questions
come from the bag's /vlm/questions topic (std_msgs/String, JSON {"camera", "question", "truth"?})
or a side file (JSON list of {"t": seconds from the start, "camera", "question"}), and are asked
through the node's NAME/ask service. Captions, answers (and annotated frames with --annotated) are
written to OUT_BAG as NAME/caption, NAME/answers (and NAME/annotated) with our message definitions
embedded. `--compare EXPECTED_BAG` reports text changes and box IoU against an earlier run (also one
recorded under another node name) and exits 1 past the tolerance. Stopped by Ctrl-C or SIGTERM, it
still writes OUT_BAG with everything recorded up to then (exit status 130 or 143).
Frames are published reliable; against a running node the player first waits for the node to subscribe
reliable (qos_reliability auto follows it). This process loads config/fastdds_large_frames.xml (Fast DDS)
unless FASTRTPS_DEFAULT_PROFILES_FILE or FASTDDS_DEFAULT_PROFILES_FILE is set: then raw frames over
512 KB also reach a node that subscribes best effort.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys

from ..ros.replay import replay  # rclpy loads only when a replay runs (this module: --help without ROS)


def _node_name(value: str) -> str:
    """argparse type of --node: an absolute ROS node name."""
    from ..ros.player import split_node_name

    try:
        split_node_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _camera_topic(value: str) -> tuple:
    """argparse type of --camera-topic: CAMERA=TOPIC (an absolute topic name)."""
    camera, sep, topic = value.partition("=")
    if not sep or not camera or not topic.startswith("/"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected CAMERA=/absolute/topic, "
                                         "e.g. front=/robot1/camera/color/image_raw")
    return camera, topic


def _watch(value: str) -> tuple:
    """argparse type of --watch: NAME=QUESTION."""
    name, sep, question = value.partition("=")
    if not sep or not name or not question.strip():
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=QUESTION, "
                                         "e.g. door_open='Is the door open?'")
    return name, question


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the replay unwinds and writes its bag."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-replay", description=__doc__.split("\n\n")[0])
    p.add_argument("bag", help="input bag (rosbag2 directory, sqlite3 or MCAP)")
    p.add_argument("--engine", help="engine directory: start the VLM node here, named --node "
                                    "(else use a running node of that name)")
    p.add_argument("--node", type=_node_name, default="/vlm",
                   help="fully qualified name of the VLM node, e.g. /robot1/vlm (default /vlm)")
    p.add_argument("--out", required=True, help="output bag to create")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed; 0: as fast as the node keeps up")
    p.add_argument("--questions", help="JSON side file of questions: [{t, camera, question}]")
    p.add_argument("--camera-topic", type=_camera_topic, action="append", default=[], metavar="CAMERA=TOPIC",
                   help="publish CAMERA's frames to TOPIC (repeatable; default: what a running node reports "
                        "on /diagnostics, else <namespace of --node>/CAMERA/image_raw)")
    p.add_argument("--watch", type=_watch, action="append", default=[], metavar="NAME=QUESTION",
                   help="a standing yes/no watch added to the node before the first frame; its events "
                        "are printed and recorded (repeatable)")
    p.add_argument("--annotated", action="store_true", help="also record the node's annotated frames")
    p.add_argument("--frames-png", metavar="PNG", help="write the annotated frames as one strip image")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--change-threshold", type=float,
                   help="--engine: the node's change_threshold (0: caption every frame; default: the node's)")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--compare", metavar="EXPECTED_BAG",
                   help="compare with an earlier run; exit 1 past tolerance")
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
    from ..ros import report
    from ..ros.dds_profile import load_large_frames_profile

    # This process publishes the bag's frames: as the writer, its shared-memory segment must hold one
    # (README "Large raw frames"). Before rclpy starts: Fast DDS reads the profile variables once.
    load_large_frames_profile()
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        summary = replay(a.bag, a.out, a.engine, a.rate, a.questions, a.annotated or bool(a.frames_png),
                         a.max_new_tokens, a.storage, quiet=a.json, node=a.node,
                         change_threshold=a.change_threshold, camera_topics=dict(a.camera_topic),
                         watches=dict(a.watch))
        if a.frames_png:
            summary["frames_png"] = report.write_strip(a.out, a.frames_png)
        if a.compare:
            summary["compare"] = report.compare(a.out, a.compare, a.min_iou, a.max_text_changes)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"mobilevlm-replay: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        stopped = "terminated" if isinstance(e, Terminated) else "interrupted"
        written = (f"what was recorded up to then is in {a.out}" if os.path.exists(a.out)
                   else "nothing written")
        print(f"mobilevlm-replay: {stopped}; {written}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n" + report.summary_text(summary, a.out))
        if a.compare:
            print(report.compare_text(summary["compare"], a.compare))
    return 0 if not a.compare or summary["compare"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
