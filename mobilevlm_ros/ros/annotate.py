"""Draw an answer on a frame for `~/annotated`: each box with its phrase, the text on a dark band.

Colour order: frames are RGB from end to end (image_convert gives RGB, rgb_to_imgmsg publishes
rgb8). OpenCV's drawing functions are blind to channel order: a colour tuple is written into
channels 0, 1, 2 as given. So every colour here is written (R, G, B) and drawn straight onto the
RGB frame; nothing is converted to BGR and back, and no colour is borrowed from BGR-minded code
(where (0, 0, 255) means red and would come out blue here).

Hershey fonts draw ASCII only; other characters are drawn as '?'.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Sequence, Tuple

import cv2
import numpy as np

from ..runtime.errors import ImageError

# (R, G, B), cycled over the boxes in order.
BOX_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 220, 64),
    (64, 140, 255),
    (255, 200, 0),
    (220, 64, 255),
    (0, 210, 210),
)
TEXT_COLOR = (255, 255, 255)
MAX_TEXT_LINES = 4
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))


def _text_width(text: str, scale: float, thickness: int) -> int:
    return cv2.getTextSize(text, _FONT, scale, thickness)[0][0]


def _fit(text: str, max_width: int, scale: float, thickness: int) -> int:
    """How many leading characters of `text` fit in max_width (at least 1, so wrapping always advances)."""
    n = len(text)
    while n > 1 and _text_width(text[:n], scale, thickness) > max_width:
        n -= 1
    return n


def _wrap(text: str, max_width: int, scale: float, thickness: int, max_lines: int) -> List[str]:
    """Greedy word wrap to max_width pixels; words wider than a line are broken; '...' when cut short."""
    words = _ascii(text).split()
    lines: List[str] = []
    current = ""
    i = 0
    while i < len(words) and len(lines) <= max_lines:
        word = words[i]
        candidate = f"{current} {word}" if current else word
        if _text_width(candidate, scale, thickness) <= max_width:
            current = candidate
            i += 1
        elif current:
            lines.append(current)
            current = ""
        else:  # a single word wider than the line
            n = _fit(word, max_width, scale, thickness)
            lines.append(word[:n])
            words[i] = word[n:]
            if not words[i]:
                i += 1
    if current and len(lines) <= max_lines:
        lines.append(current)
    if len(lines) > max_lines or i < len(words):
        lines = lines[:max_lines]
        last = lines[-1]
        while last and _text_width(last + "...", scale, thickness) > max_width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def _style(width: int, height: int) -> Tuple[float, int, int]:
    """(font scale, text thickness, box line thickness) for a frame of this size."""
    short = min(width, height)
    scale = min(max(short / 800.0, 0.35), 1.5)  # 0.6 on 640x480
    return scale, 1 if scale < 0.9 else 2, max(1, round(short / 240))


def _box_pixels(box, width: int, height: int):
    """Integer corners clipped to the frame, or None when the box is not finite or lies outside it."""
    try:
        x1, y1, x2, y2 = (float(box.x1), float(box.y1), float(box.x2), float(box.y2))
    except (AttributeError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
        return None

    def clip(v: float, hi: int) -> int:
        return int(min(max(round(v), 0), hi))

    return clip(x1, width - 1), clip(y1, height - 1), clip(x2, width - 1), clip(y2, height - 1)


def _draw_label(out: np.ndarray, text: str, x: int, y_top: int, color: Sequence[int],
                scale: float, thickness: int) -> None:
    """A filled tag of the box colour holding `text`, above the box or, at the top edge, inside it."""
    height, width = out.shape[:2]
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = 2
    tag_h = th + base + 2 * pad
    top = y_top - tag_h
    if top < 0:
        top = min(y_top, max(height - tag_h, 0))
    left = min(x, max(width - tw - 2 * pad, 0))
    cv2.rectangle(out, (left, top), (left + tw + 2 * pad, top + tag_h), tuple(int(c) for c in color), -1)
    # Dark text on light tags, light text on dark ones (Rec. 601 luma of the RGB colour).
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 128 else (255, 255, 255)
    cv2.putText(out, text, (left + pad, top + pad + th), _FONT, scale, ink, thickness, cv2.LINE_AA)


def draw_answer(rgb: np.ndarray, text: str, boxes: Iterable = ()) -> np.ndarray:
    """A copy of `rgb` (H x W x 3 uint8 RGB) with the boxes and their phrases, and `text` on a band.

    Boxes are any objects with x1, y1, x2, y2 in source pixels and a `phrase` (runtime.types.Box);
    non-finite or off-frame boxes are skipped, boxes over the edge are clipped. The text is wrapped
    to the frame width, at most MAX_TEXT_LINES lines, on a darkened band at the bottom. The input
    array is never modified.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise ImageError(f"draw_answer: expected an HxWx3 uint8 RGB array, got {type(rgb).__name__} {shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"draw_answer: image has zero size (shape {rgb.shape})")
    out = np.array(rgb, dtype=np.uint8, order="C", copy=True)
    height, width = out.shape[:2]
    scale, thickness, line = _style(width, height)

    for i, box in enumerate(boxes or ()):
        corners = _box_pixels(box, width, height)
        if corners is None:
            continue
        x1, y1, x2, y2 = corners
        color = BOX_COLORS[i % len(BOX_COLORS)]
        cv2.rectangle(out, (x1, y1), (x2, y2), color, line)
        phrase = _ascii(getattr(box, "phrase", "") or "").strip()
        if phrase:
            _draw_label(out, phrase, x1, y1, color, scale, thickness)

    if text and text.strip():
        pad = max(2, round(4 * scale))
        lines = _wrap(text, max(width - 2 * pad, 1), scale, thickness, MAX_TEXT_LINES)
        (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thickness)
        line_h = th + base + pad
        band_h = min(height, len(lines) * line_h + pad)
        band = out[height - band_h:]
        band //= 4  # darken to a quarter: white text stays readable on any frame
        y = height - band_h + pad + th
        for text_line in lines:
            cv2.putText(out, text_line, (pad, y), _FONT, scale, TEXT_COLOR, thickness, cv2.LINE_AA)
            y += line_h
    return out
