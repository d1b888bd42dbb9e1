"""Two runs of one bag compared frame by frame: captions and answers (text changed, text similarity),
count answers, typed answers (value changed, confidence moved), boxes matched by phrase (IoU), and
what one side has and the other lacks.

Sides are "candidate" (the engine under test) and "baseline"; records are task.py's. A frame is
(camera, stamp); an answer is (camera, stamp, question).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from ..runtime.grounding import box_iou

SIDES = ("candidate", "baseline")


@dataclass
class Thresholds:
    """Where a comparison fails (mobilevlm-regress's flags)."""
    min_similarity: float = 0.5  # a text less similar than this to the other side's is "dissimilar"
    max_dissimilar: float = 0.1  # share of compared texts that may be dissimilar (grounded answers'
    # texts are their boxes' coordinates: those are judged by the boxes' IoU instead)
    min_iou: float = 0.5  # a phrase's box pair below this IoU, or a box on one side only: a box change
    max_box_changes: int = 0
    max_count_changes: int = 0
    max_missing: int = 0  # captions or answers one side has and the other lacks
    max_value_changes: int = 0  # typed answers whose value differs between the sides
    confidence_shift: float = 0.2  # a typed answer's confidence moving more than this is counted (not judged)

    def crossed(self, totals: dict) -> List[str]:
        """The thresholds `totals` (compare_runs' or summed over bags) crosses, each as a sentence."""
        out = []
        if totals["texts"] and totals["dissimilar"] / totals["texts"] > self.max_dissimilar:
            out.append(f"{totals['dissimilar']} of {totals['texts']} texts below similarity "
                       f"{self.min_similarity} (more than {self.max_dissimilar:.0%})")
        if totals["box_changes"] > self.max_box_changes:
            out.append(f"{totals['box_changes']} box changes (IoU < {self.min_iou} or one side only; "
                       f"at most {self.max_box_changes})")
        if totals["count_changes"] > self.max_count_changes:
            out.append(f"{totals['count_changes']} count answers changed (at most {self.max_count_changes})")
        if totals.get("value_changes", 0) > self.max_value_changes:
            out.append(f"{totals['value_changes']} typed answers changed value "
                       f"(at most {self.max_value_changes})")
        if totals["missing"] > self.max_missing:
            out.append(f"{totals['missing']} captions/answers on one side only (at most {self.max_missing})")
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def text_similarity(a: str, b: str) -> float:
    """Share of words the two texts have in common, in order (difflib's ratio over words): 1.0 equal,
    0.0 nothing in common."""
    wa, wb = a.lower().split(), b.lower().split()
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def count_of(text: str) -> Optional[int]:
    """The number a count answer gives ("3", "3."), else None."""
    m = re.fullmatch(r"\s*(\d+)\s*\.?\s*", text)
    return int(m.group(1)) if m else None


def match_boxes(a: List[dict], b: List[dict]) -> List[dict]:
    """Boxes of two answers paired by phrase (case-insensitive), within a phrase greedily by IoU:
    [{"phrase", "iou"}] with iou None for a box on one side only ("side" says which)."""
    by_phrase: Dict[str, Tuple[list, list]] = {}
    for side, boxes in ((0, a), (1, b)):
        for box in boxes:
            by_phrase.setdefault(box["phrase"].strip().lower(), ([], []))[side].append(box["box"])
    pairs = []
    for phrase, (xs, ys) in sorted(by_phrase.items()):
        scored = sorted(((box_iou(x, y), i, j) for i, x in enumerate(xs) for j, y in enumerate(ys)),
                        reverse=True)
        used_x, used_y = set(), set()
        for iou, i, j in scored:
            if i not in used_x and j not in used_y:
                used_x.add(i)
                used_y.add(j)
                pairs.append({"phrase": phrase, "iou": round(iou, 4)})
        for side, boxes, used in ((SIDES[0], xs, used_x), (SIDES[1], ys, used_y)):
            pairs += [{"phrase": phrase, "iou": None, "side": side}
                      for i in range(len(boxes)) if i not in used]
    return pairs


def compare_runs(candidate: dict, baseline: dict, thresholds: Thresholds) -> dict:
    """One bag's two records -> {"frames": [per frame: camera, stamp_ns, topic, caption, answers,
    score], "totals": {...}}. Frames are every frame either run's bag has, in order."""
    frames: Dict[tuple, dict] = {}

    def frame_of(item: dict) -> dict:
        key = (item["camera"], item["stamp_ns"])
        return frames.setdefault(key, {"camera": key[0], "stamp_ns": key[1], "topic": item.get("topic", ""),
                                       "caption": None, "answers": {}})

    for rec in (candidate, baseline):
        for f in rec["frames"]:
            frame_of(f)
    for side, rec in zip(SIDES, (candidate, baseline)):
        for c in rec["captions"]:
            frame = frame_of(c)
            frame["caption"] = frame["caption"] or {}
            frame["caption"][side] = c["text"]
        for a in rec["answers"]:  # an answer about an image given in the request: no camera, still a stamp
            answer = {"text": a["text"], "boxes": a["boxes"], "answer_type": a.get("answer_type", "text"),
                      "value_json": a.get("value_json", ""), "confidence": a.get("confidence", -1.0)}
            # A question asked in free text and typed about one frame: two answers to compare.
            kind = answer["answer_type"]
            question = a["question"] + ("" if kind == "text" else f" [{kind}]")
            frame_of(a)["answers"].setdefault(question, {})[side] = answer
    totals = {"frames": len(frames), "texts": 0, "changed": 0, "dissimilar": 0, "similarity_sum": 0.0,
              "counts": 0, "count_changes": 0, "boxes": 0, "box_changes": 0, "min_iou": None, "missing": 0,
              "typed": 0, "value_changes": 0, "confidence_moves": 0}
    out = []
    for key in sorted(frames, key=lambda k: (k[1], k[0])):
        f = frames[key]
        score = 0.0
        caption = None
        if f["caption"] is not None:
            caption = _texts(f["caption"].get(SIDES[0]), f["caption"].get(SIDES[1]), thresholds, totals)
            score += caption["score"]
        answers = []
        for question, sides in f["answers"].items():
            a, b = sides.get(SIDES[0]), sides.get(SIDES[1])
            # Boxes on both sides: the text is where they are ("[0.43, 0.37, ...]"), judged by their IoU.
            grounded = bool(a and b and a["boxes"] and b["boxes"])
            item = {"question": question, "grounded": grounded,
                    **_texts(a and a["text"], b and b["text"], thresholds, totals, judged=not grounded),
                    "candidate_boxes": a["boxes"] if a else [], "baseline_boxes": b["boxes"] if b else []}
            if a and b and "text" not in (a["answer_type"], b["answer_type"]):
                item["value"] = [a["value_json"], b["value_json"]]
                item["confidence"] = [a["confidence"], b["confidence"]]
                totals["typed"] += 1
                if a["value_json"] != b["value_json"]:
                    totals["value_changes"] += 1
                    item["score"] += 1.0
                if abs(a["confidence"] - b["confidence"]) > thresholds.confidence_shift:
                    totals["confidence_moves"] += 1
            if a and b:
                counts = count_of(a["text"]), count_of(b["text"])
                if counts != (None, None):
                    item["count"] = list(counts)
                    totals["counts"] += 1
                    if counts[0] != counts[1]:
                        totals["count_changes"] += 1
                        item["score"] += 1.0
                item["boxes"] = match_boxes(a["boxes"], b["boxes"])
                for pair in item["boxes"]:
                    totals["boxes"] += 1
                    iou = pair["iou"]
                    if iou is not None:
                        totals["min_iou"] = iou if totals["min_iou"] is None else min(totals["min_iou"], iou)
                    if iou is None or iou < thresholds.min_iou:
                        totals["box_changes"] += 1
                    item["score"] += 1.0 - (iou or 0.0)
            score += item["score"]
            answers.append(item)
        out.append({"camera": f["camera"], "stamp_ns": f["stamp_ns"], "topic": f.get("topic", ""),
                    "caption": caption, "answers": answers, "score": round(score, 4)})
    similarity_sum = totals.pop("similarity_sum")
    totals["mean_similarity"] = round(similarity_sum / totals["texts"], 4) if totals["texts"] else None
    return {"frames": out, "totals": totals}


def _texts(a: Optional[str], b: Optional[str], thresholds: Thresholds, totals: dict,
           judged: bool = True) -> dict:
    """Both sides' text of one caption or answer, compared; `totals` counted. judged=False: the
    similarity is kept, but the text counts in no text total and scores nothing (the boxes judge it)."""
    if a is None or b is None:
        totals["missing"] += 1
        return {"candidate_text": a, "baseline_text": b, "missing": SIDES[0] if a is None else SIDES[1],
                "changed": True, "similarity": 0.0, "score": 1.0}
    sim = text_similarity(a, b)
    if judged:
        totals["texts"] += 1
        totals["changed"] += a != b
        totals["dissimilar"] += sim < thresholds.min_similarity
        totals["similarity_sum"] += sim
    return {"candidate_text": a, "baseline_text": b, "changed": a != b, "similarity": round(sim, 4),
            "score": round(1.0 - sim, 4) if judged else 0.0}


def add_totals(all_totals: List[dict]) -> dict:
    """Totals of several bags as one."""
    keys = ("frames", "texts", "changed", "dissimilar", "counts", "count_changes", "boxes", "box_changes",
            "missing", "typed", "value_changes", "confidence_moves")
    out = {k: sum(t.get(k, 0) for t in all_totals) for k in keys}
    ious = [t["min_iou"] for t in all_totals if t["min_iou"] is not None]
    out["min_iou"] = min(ious) if ious else None
    weighted = sum((t["mean_similarity"] or 0.0) * t["texts"] for t in all_totals)
    out["mean_similarity"] = round(weighted / out["texts"], 4) if out["texts"] else None
    return out
