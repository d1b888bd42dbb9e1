"""The demo's generated world: camera-like frames with a few coloured shapes, and the questions
and answers about them in the MobileVLM v1 format.

numpy / Pillow / OpenCV only (no torch): the ROS side and the bag recorder import this module.
Everything is deterministic for a seed: `make_scene(seed)` gives the same bytes on every run.

The world is deliberately simple (the demo must be RIGHT, not hard): 3 shapes x 4 colours,
objects large next to the frame (a quarter to 40 % of its short side), 1-4 of them, each
colour+shape at most once per scene, overlaps small (each object stays mostly visible).
Boxes are (x1, y1, x2, y2) in continuous pixel coordinates of the source image: pixel i covers
[i, i + 1), so the tight box of pixels 10..19 is (10, ., 20, .).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..runtime.grounding import grounding_prompt
from ..runtime.image import pad_geometry
from ..runtime.prompt import DEFAULT_CAPTION_QUESTION

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
# Nominal RGB of each colour; every object jitters around it (lighting), backgrounds stay grey-ish.
_RGB = {"red": (210, 40, 35), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (235, 205, 40)}
MAX_OBJECTS = 4
# Object size (the side of its square footprint) as a fraction of the image's short side.
_SIZE_RANGE = (0.25, 0.40)
# Each object may lose at most this fraction of its footprint to another object's footprint.
_MAX_OVERLAP = 0.08

COUNT_QUESTION = "How many objects are there?"
_NUMBER_WORDS = {"zero": 0, "no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


@dataclass
class Obj:
    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    # (x1, y1, x2, y2) pixels of the source image, tight around the drawn shape
    box: Tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> Tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8 RGB
    objects: List[Obj]  # left to right (by box centre x); instance ids follow this order
    width: int
    height: int
    # H x W uint8: 0 = background, i + 1 = objects[i] visible at that pixel (the dense ground truth).
    instances: Optional[np.ndarray] = field(default=None, repr=False)


# --- generation ---------------------------------------------------------------------------------

def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Plain or gradient low-saturation background (floor, wall, table ...), float32 0..255."""
    base = rng.uniform(60, 200)
    tint = rng.uniform(-18, 18, size=3)  # a little warm/cold, never a saturated object colour
    c0 = np.clip(base + tint, 0, 255)
    if rng.random() < 0.35:
        return np.broadcast_to(c0, (h, w, 3)).astype(np.float32)
    c1 = np.clip(c0 + rng.uniform(-60, 60), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.float32)


def _shape_mask(shape: str, w: int, h: int, x: int, y: int, s: int) -> np.ndarray:
    """Boolean mask of a shape drawn in the s x s square at (x, y)."""
    m = np.zeros((h, w), dtype=np.uint8)
    if shape == "circle":
        r = s // 2
        cv2.circle(m, (x + r, y + r), r, 1, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "square":
        cv2.rectangle(m, (x, y), (x + s - 1, y + s - 1), 1, thickness=-1)
    else:  # upright triangle filling the footprint
        pts = np.array([[x + s // 2, y], [x, y + s - 1], [x + s - 1, y + s - 1]], dtype=np.int32)
        cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8)
    return m.astype(bool)


def _tight_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlap(a, b) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def make_scene(seed: int, width: int = 320, height: int = 240, n_objects: Optional[int] = None) -> Scene:
    """A deterministic scene for `seed`: 1-4 objects (or exactly `n_objects`) on a camera-like frame."""
    if width < 32 or height < 32:
        raise ValueError(f"scene too small ({width}x{height}); at least 32x32")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else int(n_objects)
    if not 0 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 0..{MAX_OBJECTS}, got {n}")
    short = min(width, height)

    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    order = rng.permutation(len(kinds))
    placed: List[tuple] = []  # (colour, shape, x, y, size)
    for k in order[:n]:
        colour, shape = kinds[k]
        for _ in range(200):
            s = int(rng.uniform(*_SIZE_RANGE) * short)
            x, y = int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1))
            fp = (x, y, x + s, y + s)
            if all(_overlap(fp, (p[2], p[3], p[2] + p[4], p[3] + p[4])) <= _MAX_OVERLAP * min(s, p[4]) ** 2
                   for p in placed):
                placed.append((colour, shape, x, y, s))
                break
        # A scene too crowded for another object keeps the ones it has (rare at these sizes).

    img = _background(rng, width, height)
    instances = np.zeros((height, width), dtype=np.uint8)
    masks = []
    for i, (colour, shape, x, y, s) in enumerate(placed):
        mask = _shape_mask(shape, width, height, x, y, s)
        rgb = np.clip(np.asarray(_RGB[colour], np.float32) * rng.uniform(0.8, 1.1) + rng.uniform(-15, 15, 3),
                      0, 255)
        img[mask] = rgb
        instances[mask] = i + 1  # later objects are drawn on top
        masks.append(mask)
    # Camera-ish: sensor noise and, often, a slight blur.
    img = img + rng.normal(0, rng.uniform(2, 8), size=img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.5, 1.0))

    objects = [Obj(shape, colour, _tight_box(m)) for (colour, shape, *_), m in zip(placed, masks)]
    # Canonical order: left to right by centre (ties: top to bottom); instance ids follow it.
    perm = sorted(range(len(objects)), key=lambda i: (objects[i].centre[0], objects[i].centre[1]))
    remap = np.zeros(len(objects) + 1, dtype=np.uint8)
    for new, old in enumerate(perm):
        remap[old + 1] = new + 1
    return Scene(np.ascontiguousarray(img), [objects[i] for i in perm], width, height, remap[instances])


# Frame sizes of sample_scene: mostly the camera default, some portrait / larger / square frames.
FRAME_SIZES = ((320, 240), (320, 240), (320, 240), (240, 320), (400, 300), (320, 320))


def sample_scene(seed: int, max_objects: int = MAX_OBJECTS) -> Scene:
    """The scene the trainer and the evaluation use for `seed`: frame size and object count drawn
    from it too."""
    rng = np.random.default_rng(seed + 777_000_000)
    n = int(rng.integers(1, max_objects + 1))
    w, h = FRAME_SIZES[int(rng.integers(len(FRAME_SIZES)))]
    return make_scene(seed, w, h, n_objects=n)


# --- questions and answers ----------------------------------------------------------------------

def caption_question() -> str:
    return DEFAULT_CAPTION_QUESTION


def _join(names: List[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def caption_order(scene: Scene) -> List[Obj]:
    """The objects in the order captions name them: by colour, then shape (COLOURS x SHAPES order).

    A fixed vocabulary order, not left to right: listing a set asks the model only which objects
    are there, not to sort them by position as well (left to right cost the demo model its
    3- and 4-object captions).
    """
    return sorted(scene.objects, key=lambda o: (COLOURS.index(o.colour), SHAPES.index(o.shape)))


def caption_answer(scene: Scene) -> str:
    """'a red circle, a green square and a blue triangle' (caption_order); 'nothing' when empty."""
    if not scene.objects:
        return "nothing"
    return _join([f"a {o.name}" for o in caption_order(scene)])


def parse_caption(text: str) -> Counter:
    """The multiset of (colour, shape) a caption names ('two red circles' counts twice)."""
    found: Counter = Counter()
    pattern = r"\b(?:(\w+)\s+)?(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")(s?)\b"
    for m in re.finditer(pattern, text.lower()):
        count = _NUMBER_WORDS.get(m.group(1) or "", 1) if m.group(4) else 1
        found[(m.group(2), m.group(3))] += count
    return found


def scene_multiset(scene: Scene) -> Counter:
    return Counter((o.colour, o.shape) for o in scene.objects)


def referring_phrase(scene: Scene, obj: Obj) -> Optional[str]:
    """'the red circle' when no other object in the scene is a red circle, else None."""
    same = [o for o in scene.objects if (o.colour, o.shape) == (obj.colour, obj.shape)]
    return f"the {obj.name}" if len(same) == 1 else None


def grounding_question(phrase: str) -> str:
    return grounding_prompt(phrase)


def normalized_box(scene: Scene, obj: Obj) -> List[float]:
    """The object's box in 0..1 of the PADDED square image (how MobileVLM writes and the runtime
    reads boxes)."""
    g = pad_geometry(scene.width, scene.height)
    x1, y1, x2, y2 = obj.box
    return [(x1 + g.offset_x) / g.side, (y1 + g.offset_y) / g.side,
            (x2 + g.offset_x) / g.side, (y2 + g.offset_y) / g.side]


def grounding_answer(scene: Scene, obj: Obj) -> str:
    """'[0.12, 0.34, 0.56, 0.78]' (two decimals, padded square)."""
    return "[" + ", ".join(f"{v:.2f}" for v in normalized_box(scene, obj)) + "]"


def count_question() -> str:
    return COUNT_QUESTION


def count_answer(scene: Scene) -> str:
    return str(len(scene.objects))


def colour_question(shape: str) -> str:
    return f"What colour is the {shape}?"


def colour_answer(scene: Scene, shape: str) -> Optional[str]:
    """The colour of the one `shape` in the scene; None when there are none or several."""
    found = [o for o in scene.objects if o.shape == shape]
    return found[0].colour if len(found) == 1 else None


def yesno_question(colour: str, shape: str) -> str:
    return f"Is there a {colour} {shape}?"


def yesno_answer(scene: Scene, colour: str, shape: str) -> str:
    return "Yes" if any((o.colour, o.shape) == (colour, shape) for o in scene.objects) else "No"


def qa_pairs(scene: Scene, seed: int = 0) -> List[Tuple[str, str, str]]:
    """One of each kind of question about the scene, as (kind, question, answer).

    kinds: caption, count, ground (a random uniquely named object), colour (a shape present once),
    yesno (half the time about an object present). `seed` picks which object / shape is asked about.
    """
    rng = np.random.default_rng(seed)
    out = [("caption", caption_question(), caption_answer(scene)),
           ("count", count_question(), count_answer(scene))]
    named = [o for o in scene.objects if referring_phrase(scene, o)]
    if named:
        o = named[int(rng.integers(len(named)))]
        out.append(("ground", grounding_question(referring_phrase(scene, o)), grounding_answer(scene, o)))
    shapes = [s for s in SHAPES if colour_answer(scene, s)]
    if shapes:
        s = shapes[int(rng.integers(len(shapes)))]
        out.append(("colour", colour_question(s), colour_answer(scene, s)))
    if scene.objects and rng.random() < 0.5:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        c, s = o.colour, o.shape
    else:
        c, s = COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]
    out.append(("yesno", yesno_question(c, s), yesno_answer(scene, c, s)))
    return out
