"""mobilevlm-demo-bag: record a demo bag from the scene world.

  mobilevlm-demo-bag OUT_BAG [--frames 12] [--fps 2] [--camera front] [--seed 20000000]
                     [--storage sqlite3|mcap]

Topics: /<camera>/image_raw (sensor_msgs/Image, rgb8 frames of the generated world),
/<camera>/ground_truth (std_msgs/String, JSON: the frame's objects with pixel boxes, same stamp),
/vlm/questions (std_msgs/String, JSON {"camera", "question", "answer_type"?, "truth"}: questions the
replay asks, stamped just after the frame they are about; typed ones (a yes/no on every frame, a count
on every third) carry their answer type and the true value).
"""

from __future__ import annotations

import argparse
import json
import sys


def record(out: str, frames: int = 12, fps: float = 2.0, camera: str = "front", seed: int = 20_000_000,
           storage: str = "sqlite3", width: int = 320, height: int = 240, static: bool = False) -> str:
    """static: one scene in every frame, with fresh sensor noise (sigma 3 grey levels) each time: a
    parked robot's camera, for measuring what unchanged frames cost."""
    import numpy as np
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from ..demo import scenes
    from ..ros import bags

    start_ns = 1_700_000_000 * 10**9  # a fixed epoch: the same bag bytes on every run
    period_ns = int(1e9 / fps)
    with bags.BagWriter(out, storage) as bag:
        for i in range(frames):
            scene = scenes.make_scene(seed if static else seed + i, width, height)
            pixels = scene.image
            if static:
                noise = np.random.default_rng(i).normal(0.0, 3.0, pixels.shape)
                pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
            t = start_ns + i * period_ns
            img = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width,
                        data=pixels.tobytes())
            img.header.stamp.sec, img.header.stamp.nanosec = divmod(t, 10**9)
            img.header.frame_id = f"{camera}_optical_frame"
            bag.write(f"/{camera}/image_raw", "sensor_msgs/msg/Image", t, serialize_message(img))
            truth = [{"shape": o.shape, "colour": o.colour, "box": list(o.box)} for o in scene.objects]
            bag.write(f"/{camera}/ground_truth", "std_msgs/msg/String", t,
                      serialize_message(String(data=json.dumps({"stamp_ns": t, "objects": truth}))))
            # A grounding question on every frame with a nameable object, a count on every third.
            asks = []
            unique = [(o, scenes.referring_phrase(scene, o)) for o in scene.objects]
            unique = [(o, p) for o, p in unique if p]
            if unique:
                obj, phrase = unique[i % len(unique)]
                asks.append({"question": scenes.grounding_question(phrase), "phrase": phrase,
                             "truth": {"box": list(obj.box)}})
            if i % 3 == 0:
                asks.append({"question": scenes.count_question(),
                             "truth": {"answer": scenes.count_answer(scene)}})
                asks.append({"question": scenes.count_question(),  # the same, typed: a number
                             "answer_type": {"kind": "integer", "minimum": 0, "maximum": scenes.MAX_OBJECTS},
                             "truth": {"value": len(scene.objects)}})
            # A typed yes/no question: about an object of the scene on even frames, one absent on odd.
            present = sorted((o.colour, o.shape) for o in scene.objects)
            absent = [(c, s) for c in scenes.COLOURS for s in scenes.SHAPES if (c, s) not in present]
            colour, shape = present[i % len(present)] if i % 2 == 0 or not absent else absent[i % len(absent)]
            asks.append({"question": scenes.yesno_question(colour, shape), "answer_type": {"kind": "bool"},
                         "truth": {"value": (colour, shape) in present}})
            for k, q in enumerate(asks):
                q.update(camera=camera)
                bag.write(bags.QUESTIONS_TOPIC, "std_msgs/msg/String", t + 1000 + k,
                          serialize_message(String(data=json.dumps(q))))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-demo-bag", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="bag directory to create")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--camera", default="front")
    p.add_argument("--seed", type=int, default=20_000_000,
                   help="first scene seed (training used other seeds)")
    p.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3")
    p.add_argument("--static", action="store_true",
                   help="one scene in every frame, with fresh sensor noise (a parked robot)")
    a = p.parse_args(argv)
    try:
        record(a.out, a.frames, a.fps, a.camera, a.seed, a.storage, static=a.static)
    except (OSError, ValueError) as e:
        print(f"mobilevlm-demo-bag: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}: {a.frames} frames at {a.fps} Hz on /{a.camera}/image_raw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
