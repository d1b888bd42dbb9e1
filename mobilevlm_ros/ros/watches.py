"""Standing watches: named typed questions (mostly yes/no) the node keeps asking about its cameras, and
the value each holds on each camera, with hysteresis.

A watch is evaluated on a camera when that camera's newest frame shows another scene than the one
it was last evaluated on (the change detector the captions use: runtime/change.py), or every
`period_s` when that is > 0. An evaluation counts when its confidence is at least
`min_confidence`; the value changes after `hysteresis` counted evaluations in a row agree on a new
value. The first value a watch settles on makes it known (its state is published) without an
event; each later change is an event: watch, camera, the frame's header, value, confidence,
previous value. No rclpy here: the node publishes what `record` returns, the worker evaluates.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..runtime.answer_types import AnswerType
from ..runtime.errors import VLMError

WATCH_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
DEFAULT_HYSTERESIS = 2
DEFAULT_MIN_CONFIDENCE = 0.6
MAX_WATCHES = 32


class WatchError(VLMError):
    """A watch that cannot be added: the reason names the problem."""


@dataclass(frozen=True)
class Watch:
    name: str
    question: str
    answer_type: AnswerType
    cameras: Tuple[str, ...]
    period_s: float = 0.0  # 0: on scene change only
    hysteresis: int = DEFAULT_HYSTERESIS
    min_confidence: float = DEFAULT_MIN_CONFIDENCE


def make_watch(name: str, question: str, answer_type: AnswerType, cameras: Sequence[str],
               known_cameras: Sequence[str], period_s: float = 0.0, hysteresis: int = 0,
               min_confidence: float = -1.0) -> Watch:
    """A checked Watch (cameras [] = every camera; hysteresis 0 and min_confidence < 0 = the defaults);
    WatchError names what is wrong. The answer type's own checks are the caller's (they need the engine)."""
    if not isinstance(name, str) or not WATCH_NAME.match(name):
        raise WatchError(f"watch name {name!r}: letters, digits and '_', starting with a letter")
    if not isinstance(question, str) or not question.strip():
        raise WatchError(f"watch '{name}': the question is empty")
    unknown = [c for c in cameras if c not in known_cameras]
    if unknown:
        raise WatchError(f"watch '{name}': unknown camera '{unknown[0]}'; "
                         f"cameras: {', '.join(known_cameras)}")
    if not (period_s >= 0.0):  # NaN too
        raise WatchError(f"watch '{name}': period_s must be >= 0 (0: on scene change), got {period_s}")
    hysteresis = int(hysteresis) or DEFAULT_HYSTERESIS
    if not 1 <= hysteresis <= 100:
        raise WatchError(f"watch '{name}': hysteresis must be in 1..100, got {hysteresis}")
    min_confidence = DEFAULT_MIN_CONFIDENCE if min_confidence < 0 else float(min_confidence)
    if not min_confidence <= 1.0:
        raise WatchError(f"watch '{name}': min_confidence must be in 0..1, got {min_confidence}")
    kind = answer_type.kind or "bool"
    if kind in ("text", "boxes"):
        raise WatchError(f"watch '{name}': answer type {kind} has no value to watch; use bool, choice, "
                         "integer, number or json")
    return Watch(name, question.strip(), AnswerType(kind, answer_type.choices, answer_type.minimum,
                                                    answer_type.maximum, answer_type.schema),
                 tuple(cameras) or tuple(known_cameras), float(period_s), hysteresis, min_confidence)


@dataclass
class WatchState:
    """One watch on one camera."""

    known: bool = False
    value: Any = None
    value_json: str = ""
    confidence: float = 0.0
    header: Any = None  # of the frame whose evaluation set the value
    candidate_json: Optional[str] = None  # a new value being confirmed
    streak: int = 0
    evaluations: int = 0
    changes: int = 0
    running: bool = False  # an evaluation is in the batch
    last_frame: float = -1.0  # Frame.received of the last frame looked at
    last_means: Optional[np.ndarray] = None  # of the last frame evaluated
    last_at: float = -1e18  # time.monotonic() of the last evaluation


@dataclass
class WatchEvent:
    watch: str
    camera: str
    header: Any
    value: Any
    value_json: str
    confidence: float
    previous: Any
    previous_json: str


def settle(state: WatchState, value: Any, value_json: str, confidence: float, header,
           watch: Watch) -> Tuple[bool, Optional[Tuple[Any, str]]]:
    """Count one evaluation (hysteresis). Returns (the state changed, the previous (value, json) when
    that was a change between known values: an event)."""
    state.evaluations += 1
    if confidence < watch.min_confidence:
        return False, None  # unsure: neither confirms nor breaks a streak
    if state.known and value_json == state.value_json:
        state.candidate_json, state.streak = None, 0
        state.confidence, state.header = confidence, header  # the value holds, on a newer frame
        return False, None
    if value_json == state.candidate_json:
        state.streak += 1
    else:
        state.candidate_json, state.streak = value_json, 1
    if state.streak < watch.hysteresis:
        return False, None
    previous = (state.value, state.value_json) if state.known else None
    state.known, state.value, state.value_json = True, value, value_json
    state.confidence, state.header = confidence, header
    state.candidate_json, state.streak = None, 0
    if previous is not None:
        state.changes += 1
    return True, previous


class Watches:
    """The node's watches and their states, shared by the node's service threads and the worker."""

    def __init__(self):
        self._watches: Dict[str, Watch] = {}
        self._states: Dict[Tuple[str, str], WatchState] = {}
        self.lock = threading.Lock()

    def add(self, watch: Watch) -> None:
        """Add `watch`, or replace the one of its name (its states start over)."""
        with self.lock:
            if watch.name not in self._watches and len(self._watches) >= MAX_WATCHES:
                raise WatchError(f"at most {MAX_WATCHES} watches; remove one first")
            self._watches[watch.name] = watch
            for key in [k for k in self._states if k[0] == watch.name]:
                del self._states[key]
            for camera in watch.cameras:
                self._states[(watch.name, camera)] = WatchState()

    def remove(self, name: str) -> None:
        with self.lock:
            if name not in self._watches:
                raise WatchError(f"no watch named '{name}'" + (f"; watches: {', '.join(self._watches)}"
                                                              if self._watches else ""))
            del self._watches[name]
            for key in [k for k in self._states if k[0] == name]:
                del self._states[key]

    def next_due(self, camera: str, frame_received: float, now: float) -> Optional[Watch]:
        """A watch on `camera` to look at for its newest frame (received at `frame_received`): one that
        has not seen that frame, or whose period is up. It is marked running; the worker decides
        with the frame's pixels whether the scene changed (`must_evaluate`)."""
        with self.lock:
            for watch in self._watches.values():
                state = self._states.get((watch.name, camera))
                if state is None or state.running:
                    continue
                periodic = watch.period_s > 0 and now - state.last_at >= watch.period_s
                if frame_received != state.last_frame or periodic:
                    state.running = True
                    return watch
            return None

    def must_evaluate(self, watch: Watch, camera: str, means: np.ndarray, changed, now: float,
                      frame_received: float) -> bool:
        """Whether the frame looked at calls for an evaluation: the scene changed since the last one
        (`changed(a, b)`), or the period is up. If not, the watch is done with this frame."""
        with self.lock:
            state = self._states.get((watch.name, camera))
            if state is None:
                return False
            state.last_frame = frame_received
            periodic = watch.period_s > 0 and now - state.last_at >= watch.period_s
            if state.last_means is None or periodic or changed(means, state.last_means):
                state.last_means, state.last_at = means, now
                return True
            state.running = False
            return False

    def record(self, watch: Watch, camera: str, value: Any, value_json: str, confidence: float,
               header) -> Tuple[bool, Optional[WatchEvent]]:
        """An evaluation's result (value None: it failed, nothing counts). Returns (the published
        state changed, the event if the value changed between known values)."""
        with self.lock:
            state = self._states.get((watch.name, camera))
            if state is None or self._watches.get(watch.name) is not watch:  # removed or replaced meanwhile
                return False, None
            state.running = False
            if value is None:
                return False, None
            changed, previous = settle(state, value, value_json, confidence, header, watch)
            if previous is None:
                return changed, None
            return True, WatchEvent(watch.name, camera, header, value, value_json, confidence, *previous)

    def finished(self, watch: Watch, camera: str) -> None:
        """An evaluation that could not run (bad frame, engine failure): the watch may be looked at again."""
        with self.lock:
            state = self._states.get((watch.name, camera))
            if state is not None:
                state.running = False

    def snapshot(self) -> List[Tuple[Watch, str, WatchState]]:
        """(watch, camera, a copy of its state) for every watch and camera, in name order."""
        with self.lock:
            return [(self._watches[name], camera, WatchState(**vars(state)))
                    for (name, camera), state in sorted(self._states.items())]

    def names(self) -> List[str]:
        with self.lock:
            return sorted(self._watches)
