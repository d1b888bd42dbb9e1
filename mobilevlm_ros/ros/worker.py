"""The inference worker: one thread owns the VLM; the ROS callbacks only hand it work.

- Latest-frame semantics: each camera keeps one frame; a frame replaced before inference used
  it is dropped and counted. Nothing queues frames.
- Questions (service and action) wait in a bounded queue; one past its size is refused as busy.
- Captions: each camera is captioned at most every 1/rate seconds, on its newest frame, when no
  question is waiting (questions come first: a person is waiting for them).
No rclpy here: the node (node.py) turns messages into calls and answers into messages.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

from ..runtime.errors import VLMError
from ..runtime.generation import GenerationParams
from ..runtime.types import Answer


@dataclass
class Frame:
    rgb: np.ndarray
    header: object  # the source message's header (std_msgs/Header), passed through untouched
    received: float  # time.monotonic() at arrival


@dataclass
class Job:
    """One question. The worker fills `answer` or `error`, then sets `done`."""

    frame: Frame
    camera: str
    question: Optional[str]  # None: a caption
    params: GenerationParams
    on_text: Optional[Callable[[str, int], None]] = None  # (text so far, tokens) after each piece
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    answer: Optional[Answer] = None
    error: str = ""
    stopped: str = ""  # why the worker stopped it (e.g. "node deactivated"); "" when it was not
    queued_s: float = 0.0


@dataclass
class CameraStats:
    received: int = 0
    dropped: int = 0  # replaced before inference used them
    refused: int = 0  # could not be converted
    captions: int = 0
    last_caption_at: float = 0.0


class Worker:
    def __init__(self, vlm, on_caption: Callable[[str, Frame, Answer], None],
                 on_answer: Optional[Callable[[Job], None]] = None, log_error: Callable[[str], None] = print):
        self.vlm = vlm
        self.on_caption = on_caption
        self.on_answer = on_answer
        self.log_error = log_error
        self.caption_rate_hz = 0.0
        self.caption_prompt: Optional[str] = None
        self.caption_params = GenerationParams()
        self.max_queue = 2
        self._frames: Dict[str, Optional[Frame]] = {}
        self._fresh: Dict[str, bool] = {}  # newest frame not yet used by a caption
        self.stats: Dict[str, CameraStats] = {}
        self._asks: Deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self.busy_refusals = 0
        self.answers = 0
        self.last: Optional[Answer] = None
        self.current: Optional[Job] = None

    # -- called from ROS callbacks ---------------------------------------------------------------
    def add_camera(self, name: str) -> None:
        with self._cv:
            self._frames.setdefault(name, None)
            self._fresh.setdefault(name, False)
            self.stats.setdefault(name, CameraStats())

    def put_frame(self, camera: str, frame: Frame) -> None:
        with self._cv:
            st = self.stats[camera]
            st.received += 1
            if self._fresh.get(camera):
                st.dropped += 1
            self._frames[camera] = frame
            self._fresh[camera] = True
            self._cv.notify()

    def refuse_frame(self, camera: str) -> None:
        with self._cv:
            self.stats[camera].refused += 1

    def latest(self, camera: str) -> Optional[Frame]:
        with self._cv:
            return self._frames.get(camera)

    def submit(self, job: Job) -> bool:
        """Queue a question; False (and nothing queued) when `max_queue` questions already wait."""
        with self._cv:
            waiting = len(self._asks) + (self.current is not None)  # the one being answered waits for none
            if waiting > self.max_queue:
                self.busy_refusals += 1
                return False
            job.queued_s = time.monotonic()
            self._asks.append(job)
            self._cv.notify()
            return True

    def queue_length(self) -> int:
        with self._cv:
            return len(self._asks)

    # -- the thread --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._loop, name="mobilevlm-inference", daemon=True)
            self._thread.start()

    def stop(self, reason: str = "node stopped") -> None:
        """End the thread; waiting questions fail and the running one is cancelled, all with `reason`."""
        with self._cv:
            self._running = False
            for job in self._asks:
                job.stopped = job.error = reason
                job.done.set()
            self._asks.clear()
            if self.current is not None:
                self.current.stopped = reason
                self.current.cancel.set()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _next(self):
        """The next piece of work: ("ask", job) | ("caption", camera, frame) | None after waiting."""
        with self._cv:
            while self._running:
                if self._asks:
                    self.current = self._asks.popleft()
                    return ("ask", self.current)
                wait = 0.5
                if self.caption_rate_hz > 0:
                    now, period = time.monotonic(), 1.0 / self.caption_rate_hz
                    for cam, fresh in self._fresh.items():
                        if not fresh:
                            continue
                        due = self.stats[cam].last_caption_at + period
                        if due <= now:
                            self._fresh[cam] = False
                            self.stats[cam].last_caption_at = now
                            return ("caption", cam, self._frames[cam])
                        wait = min(wait, due - now)
                self._cv.wait(timeout=max(wait, 0.001))
            return None

    def _loop(self) -> None:
        while True:
            work = self._next()
            if work is None:
                return
            if work[0] == "ask":
                self._answer(work[1])
            else:
                self._caption(work[1], work[2])

    def _caption(self, camera: str, frame: Frame) -> None:
        try:
            answer = self.vlm.describe(frame.rgb, self.caption_prompt, self.caption_params)
        except Exception as e:  # a bad frame or an engine failure: log, keep captioning the next frames
            self.log_error(f"caption of camera '{camera}' failed: {e}")
            return
        answer.timings.queue_s = time.monotonic() - frame.received - answer.timings.total_s
        self.stats[camera].captions += 1
        self.last = answer
        self.on_caption(camera, frame, answer)

    def _answer(self, job: Job) -> None:
        try:
            if job.cancel.is_set():  # cancelled while it waited
                raise VLMError("cancelled before it started")
            queue_s = time.monotonic() - job.queued_s
            request = self.vlm.start(job.frame.rgb, job.question, job.params, cancel=job.cancel)
            text, tokens = "", 0
            for piece in request:
                text += piece
                tokens = len(request.generation.token_ids)
                if job.on_text is not None:
                    job.on_text(text, tokens)
            job.answer = request.answer
            job.answer.timings.queue_s = queue_s
            self.answers += 1
            self.last = job.answer
        except (VLMError, ValueError) as e:
            job.error = str(e)
        except Exception as e:  # an engine failure must not kill the worker thread
            job.error = f"inference failed: {type(e).__name__}: {e}"
            self.log_error(job.error)
        finally:
            with self._cv:
                self.current = None
            job.done.set()
        if self.on_answer is not None and job.answer is not None:
            self.on_answer(job)

    def snapshot(self) -> List[tuple]:
        with self._cv:
            return [(name, CameraStats(**vars(st))) for name, st in self.stats.items()]
