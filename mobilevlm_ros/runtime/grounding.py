"""Grounding: the referring-expression question, and boxes parsed out of answers back to pixels.

MobileVLM learned grounding from the LLaVA-1.5 mix (RefCOCO / Visual Genome): the answer is
`[x1, y1, x2, y2]`, floats in 0..1 of the PADDED square image. Mapping to the camera image must
undo that padding, with the same geometry preprocessing used (image.pad_geometry).
"""

from __future__ import annotations

import re
from typing import List, Sequence, Tuple

from .errors import PromptError
from .image import pad_geometry
from .types import Box

_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: {}"

# A box is exactly four numbers in brackets; three or five numbers, or words, do not match.
_NUM = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
_BOX_RE = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")
# Values a little outside 0..1 are rounding noise and are clamped; beyond this the box is rejected.
_TOLERANCE = 0.02
# Where a phrase for the next box may start: after a clause/sentence mark, a line break, or a
# bracket (of a malformed box). "1.8 m" keeps its dot: only a mark followed by a space counts.
_CLAUSE_END = re.compile(r"[.!?;,](?=\s|$)|[\n\[\]]")
_LEADING_WORDS = {"and", "or", "then", "while", "also"}
_TRAILING_WORDS = {"at", "is", "are", "located"}


def grounding_prompt(phrase: str) -> str:
    """The training-data question for one referring expression.

    LLaVA's region questions end the phrase with a full stop, so we add one when the user gave no
    final punctuation ("the red cup" -> "... describes: the red cup.").
    """
    phrase = " ".join(phrase.split()) if isinstance(phrase, str) else ""
    if not phrase:
        raise PromptError("the phrase to ground is empty")
    if phrase[-1] not in ".!?":
        phrase += "."
    return _QUESTION.format(phrase)


def grounding_phrase(question: str) -> str:
    """The phrase of a referring-expression question ("" for any other question), for labelling its box."""
    prefix = _QUESTION.format("")
    if not question.startswith(prefix):
        return ""
    return question[len(prefix):].strip().rstrip(".")


def parse_boxes(text: str) -> List[Tuple[List[float], str]]:
    """All well-formed `[x1, y1, x2, y2]` boxes in `text`, each with the phrase just before it ("" if none).

    Rejected: anything but four numbers, values outside [0, 1] by more than a small tolerance, and
    boxes with x2 <= x1 or y2 <= y1.
    """
    found = []
    prev_end = 0
    for m in _BOX_RE.finditer(text):
        coords = [float(g) for g in m.groups()]
        segment, prev_end = text[prev_end:m.start()], m.end()
        if any(v < -_TOLERANCE or v > 1 + _TOLERANCE for v in coords):
            continue
        coords = [min(max(v, 0.0), 1.0) for v in coords]
        if coords[2] <= coords[0] or coords[3] <= coords[1]:
            continue
        found.append((coords, _phrase_before(segment)))
    return found


def _phrase_before(segment: str) -> str:
    """The clause right before a box: "... and a blue square " -> "a blue square". A heuristic, kept small."""
    segment = segment.rstrip(" \t:=-(")
    words = _CLAUSE_END.split(segment)[-1].split()
    while words and words[0].lower() in _LEADING_WORDS:
        words.pop(0)
    while words and words[-1].lower() in _TRAILING_WORDS:
        words.pop()
    return " ".join(words)


def to_pixel_box(normalized: Sequence[float], width: int, height: int, phrase: str = "") -> Box:
    """Normalised box of the padded square -> pixel box in the original width x height image, clipped to it.

    Pixel coordinates are continuous: pixel i covers [i, i + 1), so a full-image box is (0, 0, w, h).
    """
    if len(normalized) != 4:
        raise ValueError(f"a box needs 4 numbers, got {len(normalized)}")
    g = pad_geometry(width, height)
    nx1, ny1, nx2, ny2 = (float(v) for v in normalized)

    def px(v: float, offset: int, limit: int) -> float:
        return min(max(v * g.side - offset, 0.0), float(limit))

    return Box(
        x1=px(nx1, g.offset_x, width),
        y1=px(ny1, g.offset_y, height),
        x2=px(nx2, g.offset_x, width),
        y2=px(ny2, g.offset_y, height),
        normalized=[nx1, ny1, nx2, ny2],
        phrase=phrase,
    )


def find_boxes(text: str, width: int, height: int, default_phrase: str = "") -> List[Box]:
    """Boxes in an answer, in pixels of the original image. Boxes lying wholly in the padding are dropped."""
    boxes = []
    for coords, phrase in parse_boxes(text):
        box = to_pixel_box(coords, width, height, phrase or default_phrase)
        if box.width > 0 and box.height > 0:
            boxes.append(box)
    return boxes


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when they do not overlap or are empty."""
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
