"""The node's parameters: one table (name, default, description, range, live) and their checks.

`live` parameters take effect at once; the others are read on configure (engine) or activate
(cameras, QoS), and can be changed only while the node is unconfigured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ..runtime.errors import PromptError
from ..runtime.generation import MAX_NEW_TOKENS_LIMIT, MAX_TEMPERATURE, GenerationParams
from ..runtime.prompt import DEFAULT_CAPTION_QUESTION, check_question
from ..runtime.sessions import BACKENDS


def _one_of(*allowed: str) -> Callable[[Any], str]:
    return lambda v: "" if v in allowed else f"must be one of {', '.join(allowed)}"


def _directory_or_empty(v: Any) -> str:
    return "" if not v or os.path.isdir(v) else f"{v!r} is not a directory"


# A camera name becomes part of topic names: N/image_raw.
CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")
TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("auto", "best_effort", "reliable")


def _camera_names(v: Any) -> str:
    if not v:
        return "must name at least one camera"
    bad = [c for c in v if not CAMERA_NAME.match(c)]
    if bad:
        return f"invalid camera name {bad[0]!r}: letters, digits, '_' and '/' only, starting with a letter"
    repeated = sorted({c for c in v if v.count(c) > 1})
    return f"{', '.join(repeated)} named more than once: camera names must be unique" if repeated else ""


def _transports(v: Any) -> str:
    return "" if v and all(t in TRANSPORTS for t in v) else f"each must be {' or '.join(TRANSPORTS)}"


def _watch_names(v: Any) -> str:
    from .watches import WATCH_NAME  # (watches.py imports nothing of ROS either)

    bad = [n for n in v if not isinstance(n, str) or not WATCH_NAME.match(n)]
    if bad:
        return f"invalid watch name {bad[0]!r}: letters, digits and '_', starting with a letter"
    repeated = sorted({n for n in v if v.count(n) > 1})
    return f"{', '.join(repeated)} named more than once" if repeated else ""


def _question(v: Any) -> str:
    try:
        check_question(v)
    except PromptError as e:
        return str(e)
    return ""


@dataclass(frozen=True)
class Param:
    """One parameter: `range` is enforced by rclpy (descriptor), `check` by the node ('' = valid)."""

    name: str
    default: Any
    description: str
    range: Optional[Tuple[float, float]] = None
    live: bool = False
    check: Optional[Callable[[Any], str]] = None


PARAMS = (
    Param("engine_dir", "", "engine directory (manifest.json + ONNX graphs); empty: the packaged demo engine",
          check=_directory_or_empty),
    Param("backend", "auto", f"execution provider: {', '.join(BACKENDS)} (auto follows the engine's target)",
          check=_one_of(*BACKENDS)),
    Param("threads", 0, "onnxruntime intra-op threads; 0: every core this process may use", (0, 256)),
    Param("max_context", 1024, "KV-cache positions to reserve (prompt + image + answer)", (256, 8192)),
    Param("max_batch", 4, "answers decoded together (captions of several cameras, questions): each "
                          "holds a KV-cache row of max_context positions; 1: one at a time", (1, 16)),
    Param("cameras", ["camera"], "camera names; camera N subscribes to N/image_raw (raw) or "
                                 "N/image_raw/compressed (compressed); remap those topics in the launch file",
          check=_camera_names),
    Param("transports", ["raw"], "per camera: raw or compressed (one value applies to every camera)",
          check=_transports),
    Param("qos_reliability", "auto", "camera subscriptions: auto (reliable when every publisher of the "
                                     "topic is, else best effort; follows them as they change), best_effort "
                                     "or reliable", check=_one_of(*RELIABILITIES)),
    Param("qos_depth", 1, "camera subscription queue depth (the node keeps only the newest frame anyway)",
          (1, 100)),
    Param("caption_rate_hz", 0.5, "captions per second and camera; 0: no periodic captions",
          (0.0, 30.0), True),
    Param("caption_prompt", DEFAULT_CAPTION_QUESTION, "the question a caption answers", None, True,
          check=_question),
    Param("max_new_tokens", 64, "answer length limit in tokens (a request may ask for less or more); with "
                                "caption_prompt it must fit the engine's context",
          (1, MAX_NEW_TOKENS_LIMIT), True),
    Param("temperature", 0.0, "sampling temperature; 0: greedy, as the model was evaluated",
          (0.0, MAX_TEMPERATURE), True),
    Param("top_p", 1.0, "nucleus sampling mass (with temperature > 0)", (0.01, 1.0), True),
    Param("change_threshold", 8.0,
          "a camera frame whose 24 x 32 grid of cell means all moved by less than this (grey levels) "
          "since the frame of its last caption is the same scene: the caption is re-published "
          "(reused: true) without inference; 0: off", (0.0, 255.0), True),
    Param("max_queue", 2, "questions that may wait while one is answered; more are refused as busy",
          (0, 8), True),
    Param("conversation_max_turns", 8, "follow-up questions: turns a conversation may have", (1, 32), True),
    Param("conversation_idle_s", 300.0, "follow-up questions: a conversation unused this long expires",
          (1.0, 86400.0), True),
    Param("watches", [], "standing watches declared in the params file, by name; each has parameters "
                         "watch.NAME.question, .type, .choices, .schema, .cameras, .period_s, "
                         ".hysteresis, .min_confidence (more through ~/add_watch)", check=_watch_names),
    Param("diagnostics_period_s", 1.0, "how often /diagnostics is published", (0.1, 60.0)),
    Param("autostart", True, "configure and activate at start-up (a lifecycle manager can do it instead)"),
)
BY_NAME = {p.name: p for p in PARAMS}


# A declared watch's parameters (watch.NAME.FIELD) and their defaults; see watches.py.
WATCH_FIELDS = {"question": "", "type": "bool", "choices": [], "schema": "", "cameras": [], "period_s": 0.0,
                "hysteresis": 2, "min_confidence": 0.6}


def check(name: str, value: Any) -> str:
    """'' if `value` is acceptable for parameter `name`, else the reason (ranges are checked by rclpy)."""
    spec = BY_NAME[name]
    reason = spec.check(value) if spec.check is not None else ""
    return f"{name}: {reason}" if reason else ""


def generation_params(values: Dict[str, Any], max_new_tokens: Optional[int] = None,
                      temperature: Optional[float] = None) -> GenerationParams:
    """GenerationParams from the parameter `values`; a request's own max_new_tokens / temperature
    replace the parameters' where given. ValueError names what is out of range."""
    return GenerationParams(
        max_new_tokens=int(values["max_new_tokens"] if max_new_tokens is None else max_new_tokens),
        temperature=float(values["temperature"] if temperature is None else temperature),
        top_p=float(values["top_p"])).validate()


def camera_transports(cameras, transports) -> list:
    """Pair each camera with its transport; one transport applies to all cameras."""
    if len(transports) == 1:
        return [(c, transports[0]) for c in cameras]
    if len(transports) != len(cameras):
        raise ValueError(f"transports has {len(transports)} entries for {len(cameras)} cameras")
    return list(zip(cameras, transports))
