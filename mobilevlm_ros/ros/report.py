"""What a replay run amounts to: its printed lines, the summary with truth scoring, `compare` of two
runs, and the PNG strip of annotated frames.

Output bags are read by message type (Caption, GroundedAnswer), not by topic name, so runs recorded
from nodes of different names compare with each other.
"""

from __future__ import annotations

import json
from typing import List

from ..runtime.grounding import box_iou
from . import bags
from .player import Event, stamp_ns
from .recorder import ANSWER_TYPE, CAPTION_TYPE, IMAGE_TYPE


def box_corners(b) -> tuple:
    """A BoundingBox message's (x1, y1, x2, y2) in pixels."""
    half_w, half_h = b.size_x / 2, b.size_y / 2
    return (b.center_x - half_w, b.center_y - half_h, b.center_x + half_w, b.center_y + half_h)


# -- lines printed as the run goes ----------------------------------------------------------------
def caption_text(c) -> str:
    return f"[{c.header.stamp.sec}.{c.header.stamp.nanosec:09d}] {c.camera}: {c.text}"


def answer_text(q: dict, a) -> str:
    boxes = "".join(f" [{b.label or '-'}: " + ",".join(f"{v:.0f}" for v in box_corners(b)) + " px]"
                    for b in a.boxes)
    typed = (f"  ({a.answer_type} {a.value_json}, confidence {a.confidence:.2f})"
             if a.answer_type not in ("", "text") else "")
    return f"  Q ({q.get('camera') or '-'}): {q['question']}\n  A: {a.text}{boxes}{typed}"


def watch_event_text(e) -> str:
    return (f"[{e.header.stamp.sec}.{e.header.stamp.nanosec:09d}] watch '{e.watch}' on {e.camera}: "
            f"{e.previous_value_json or '?'} -> {e.value_json} (confidence {e.confidence:.2f})")


def refusal_text(q: dict, error: str) -> str:
    return f"  Q: {q['question']}\n  error: {error}"


# -- the summary ----------------------------------------------------------------------------------
def summary(events: List[Event], captions: list, answers: list, timing_errors: List[float]) -> dict:
    """Counts, and the answers scored against the truth their questions carry: a box (IoU >= 0.5 with
    the first box of the answer), a count (the answer's text), or a typed answer's value (`value`)."""
    frames = sum(e.kind == "frame" for e in events)
    grounded, grounded_ok, counted, counted_ok, typed, typed_ok = 0, 0, 0, 0, 0, 0
    for q, a in answers:
        truth = q.get("truth") or {}
        if "value" in truth:
            typed += 1
            typed_ok += bool(a.value_json) and json.loads(a.value_json) == truth["value"]
        elif "box" in truth:
            grounded += 1
            if a.boxes:
                grounded_ok += box_iou(box_corners(a.boxes[0]), truth["box"]) >= 0.5
        elif "answer" in truth:
            counted += 1
            counted_ok += a.text.strip().rstrip(".").lower() == str(truth["answer"]).lower()
    computed = [c for c in captions if not c.reused]
    return {"frames": frames, "captions": len(captions), "captions_reused": len(captions) - len(computed),
            "caption_compute_s": sum(c.timings.total_s for c in computed), "answers": len(answers),
            "grounding_iou50": [grounded_ok, grounded], "counting": [counted_ok, counted],
            "typed": [typed_ok, typed],
            "timing_error_max_s": max((abs(t) for t in timing_errors), default=0.0)}


def summary_text(s: dict, out_bag: str) -> str:
    g, c, t = s["grounding_iou50"], s["counting"], s.get("typed", [0, 0])
    reused = f" ({s['captions_reused']} reused)" if s.get("captions_reused") else ""
    watched = f", {s['watch_events']} watch events" if s.get("watch_events") else ""
    return (f"{s['frames']} frames, {s['captions']} captions{reused}, {s['answers']} answers{watched}; "
            f"grounding IoU>=0.5 {g[0]}/{g[1]}, counting {c[0]}/{c[1]}, typed answers {t[0]}/{t[1]}; "
            f"timing error max {s['timing_error_max_s'] * 1e3:.0f} ms; wrote {out_bag}")


# -- comparing two runs ---------------------------------------------------------------------------
def compare(actual_bag: str, expected_bag: str, min_iou: float = 0.5, max_text_changes: int = 0) -> dict:
    """Captions paired by (camera, source stamp), answers by (question, source stamp)."""
    (ca, aa), (ce, ae) = _outputs(actual_bag), _outputs(expected_bag)
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
                ious.extend(box_iou(box_corners(x), box_corners(y)) for x, y in zip(g.boxes, w.boxes))
    report = {"compared": len(ce) + len(ae), "text_changes": changes, "missing": missing,
              "min_box_iou": min(ious, default=1.0), "boxes_compared": len(ious)}
    report["ok"] = (len(changes) <= max_text_changes and not missing and report["min_box_iou"] >= min_iou)
    return report


def compare_text(report: dict, expected_bag: str, shown: int = 10) -> str:
    lines = [f"compare with {expected_bag}: {len(report['text_changes'])} text changes, "
             f"{len(report['missing'])} missing, min box IoU {report['min_box_iou']:.2f} -> "
             f"{'OK' if report['ok'] else 'DIFFERENT'}"]
    lines += [f"  {ch['kind']} {ch['key']}: {ch['expected']!r} -> {ch['actual']!r}"
              for ch in report["text_changes"][:shown]]
    return "\n".join(lines)


def _outputs(bag: str) -> tuple:
    """A run's captions by (camera, stamp) and answers by (question, answer type, stamp), whatever their
    topics."""
    wanted = {t for t, ty in bags.topics(bag).items() if ty in (CAPTION_TYPE, ANSWER_TYPE)}
    captions, answers = {}, {}
    for _, msgtype, _, raw in bags.read(bag, wanted):
        m = bags.deserialize(msgtype, raw)
        if msgtype == CAPTION_TYPE:
            captions[(m.camera, stamp_ns(m.header))] = m
        else:
            # One question asked in free text and typed about one frame: two answers.
            answers[(m.question, m.answer_type or "text", stamp_ns(m.header))] = m
    return captions, answers


# -- the annotated frames as one picture ----------------------------------------------------------
def write_strip(bag: str, png: str, columns: int = 4, limit: int = 16) -> str:
    """The recorded annotated frames (Image topics named .../annotated), tiled into one PNG."""
    import numpy as np
    from PIL import Image as PILImage

    from .bridge import imgmsg_to_rgb

    topics = {t for t, ty in bags.topics(bag).items() if ty == IMAGE_TYPE and t.endswith("/annotated")}
    frames = [imgmsg_to_rgb(bags.deserialize(t, raw)) for _, t, _, raw in bags.read(bag, topics)][:limit]
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
