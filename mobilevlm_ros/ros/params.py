"""The node's parameters: one table (name, default, description, range, live) and their checks.

`live` parameters take effect at once; the others are read on configure (engine) or activate
(cameras, QoS), and can be changed only while the node is unconfigured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from ..runtime.errors import PromptError
from ..runtime.generation import MAX_NEW_TOKENS_LIMIT
from ..runtime.prompt import DEFAULT_CAPTION_QUESTION, check_question
from ..runtime.sessions import BACKENDS


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    range: Optional[Tuple[float, float]] = None
    live: bool = False


PARAMS = (
    Param("engine_dir", "", "engine directory (manifest.json + ONNX graphs); empty: the packaged demo engine"),
    Param("backend", "auto", f"execution provider: {', '.join(BACKENDS)} (auto follows the engine's target)"),
    Param("threads", 0, "onnxruntime intra-op threads; 0: every core this process may use", (0, 256)),
    Param("max_context", 1024, "KV-cache positions to reserve (prompt + image + answer)", (256, 8192)),
    Param("cameras", ["camera"], "camera names; camera N subscribes to N/image_raw (raw) or "
                                 "N/image_raw/compressed (compressed); remap those topics in the launch file"),
    Param("transports", ["raw"], "per camera: raw or compressed (one value applies to every camera)"),
    Param("qos_reliability", "best_effort", "camera subscriptions: best_effort (sensor data) or reliable"),
    Param("qos_depth", 1, "camera subscription queue depth (the node keeps only the newest frame anyway)", (1, 100)),
    Param("caption_rate_hz", 0.5, "captions per second and camera; 0: no periodic captions", (0.0, 30.0), True),
    Param("caption_prompt", DEFAULT_CAPTION_QUESTION, "the question a caption answers", None, True),
    Param("max_new_tokens", 64, "answer length limit in tokens (a request may ask for less or more); with "
                                "caption_prompt it must fit the engine's context", (1, MAX_NEW_TOKENS_LIMIT), True),
    Param("temperature", 0.0, "sampling temperature; 0: greedy, as the model was evaluated", (0.0, 2.0), True),
    Param("top_p", 1.0, "nucleus sampling mass (with temperature > 0)", (0.01, 1.0), True),
    Param("max_queue", 2, "questions that may wait while one is answered; more are refused as busy", (0, 8), True),
    Param("diagnostics_period_s", 1.0, "how often /diagnostics is published", (0.1, 60.0)),
    Param("autostart", True, "configure and activate at start-up (a lifecycle manager can do it instead)"),
)
BY_NAME = {p.name: p for p in PARAMS}

# A camera name becomes part of topic names: N/image_raw.
CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


def check(name: str, value: Any) -> str:
    """'' if `value` is acceptable for parameter `name`, else the reason (ranges are checked by rclpy)."""
    if name == "backend" and value not in BACKENDS:
        return f"backend must be one of {', '.join(BACKENDS)}"
    if name == "engine_dir" and value and not os.path.isdir(value):
        return f"engine_dir {value!r} is not a directory"
    if name == "cameras":
        if not value:
            return "cameras must name at least one camera"
        if len(set(value)) != len(value):
            return "camera names must be unique"
        bad = [c for c in value if not CAMERA_NAME.match(c)]
        if bad:
            return f"invalid camera name(s) {bad}: letters, digits, '_' and '/' only, starting with a letter"
    if name == "transports" and (not value or any(t not in ("raw", "compressed") for t in value)):
        return "transports must be 'raw' or 'compressed'"
    if name == "qos_reliability" and value not in ("best_effort", "reliable"):
        return "qos_reliability must be best_effort or reliable"
    if name == "caption_prompt":
        try:
            check_question(value)
        except PromptError as e:
            return f"caption_prompt: {e}"
    return ""


def camera_transports(cameras, transports) -> list:
    """Pair each camera with its transport; one transport applies to all cameras."""
    if len(transports) == 1:
        return [(c, transports[0]) for c in cameras]
    if len(transports) != len(cameras):
        raise ValueError(f"transports has {len(transports)} entries for {len(cameras)} cameras")
    return list(zip(cameras, transports))
