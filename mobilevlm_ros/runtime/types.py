"""Results shared by the runtime and the ROS layer (converted to messages in exactly one place)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Box:
    """A grounded region. Pixel box in the ORIGINAL (unpadded) image, normalised box as the model wrote it."""

    x1: float
    y1: float
    x2: float
    y2: float
    # [x1, y1, x2, y2] in 0..1 of the padded square, exactly as parsed from the answer.
    normalized: List[float] = field(default_factory=list)
    phrase: str = ""

    @property
    def xyxy(self) -> tuple:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


@dataclass
class Timings:
    """Seconds spent in each stage of one request."""

    queue_s: float = 0.0  # waiting for the inference worker (set by the ROS layer)
    preprocess_s: float = 0.0
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    prompt_tokens: int = 0  # positions of the whole prompt (text + image)
    prefill_tokens: int = 0  # positions actually computed (the rest came from the cache)
    new_tokens: int = 0
    forced_tokens: int = 0  # of new_tokens, those a typed answer's grammar forced (no decode step each)

    @property
    def decode_tokens_per_s(self) -> float:
        # The first new token comes out of prefill; decode steps make the rest.
        steps = max(self.new_tokens - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class Answer:
    """What `VLM.describe` returns: the text, the boxes found in it, and how long it took."""

    text: str
    prompt: str
    boxes: List[Box] = field(default_factory=list)
    token_ids: List[int] = field(default_factory=list)
    finish_reason: str = ""  # "eos", "stop", "length", "cancelled"
    timings: Timings = field(default_factory=Timings)
    image_size: Optional[tuple] = None  # (width, height) of the source image
    reused: bool = False  # the node re-published an earlier caption for an unchanged frame
    # Typed answers (answer_types.py); free text keeps the defaults.
    answer_type: str = "text"
    value: Any = None  # bool, str, int, float, a list of boxes as dicts, or any JSON value
    value_json: str = ""  # the value as JSON text
    # The model's probability of the value among all the type allows (-1: free text, not computed).
    confidence: float = -1.0
    alternatives: Dict[str, float] = field(default_factory=dict)  # closed sets: every value's probability
    error: str = ""  # why a typed answer has no value (e.g. cut by max_new_tokens)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timings"]["decode_tokens_per_s"] = self.timings.decode_tokens_per_s
        return d
