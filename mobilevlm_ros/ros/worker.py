"""The inference worker: one thread owns the VLM; the ROS callbacks only hand it work.

- Batched: up to the VLM's `max_batch` answers (captions due on several cameras, queued questions)
  decode together, one decoder call per token for all (runtime/batch.py). A new one joins as soon
  as a row is free, without waiting for the others; each keeps its own feedback, cancel and timings.
  A camera's image prefix stays in a cache row while other cameras are answered (VLM.row_for).

- Latest-frame semantics: each camera keeps one frame; a frame replaced before inference used
  it is dropped and counted. Nothing queues frames. A frame is converted to RGB when inference
  first uses it, on this thread: a dropped frame is never decoded.
- Questions (service and action) wait in a bounded queue; one past its size is refused as busy.
- Captions: each camera is captioned at most every 1/rate seconds, on its newest frame, one at a
  time per camera; waiting questions take free rows first (a person is waiting for them).
- Unchanged frames (runtime/change.py, `change_threshold` > 0): a frame that shows the same scene as
  the one the camera's last caption was computed from gets that caption again (`reused`), without
  vision or prefill; a question about it is asked about that same frame, so the VLM's cached image
  prefix answers it. One frame and one caption are kept per camera.
- Watches (watches.py): standing typed questions, evaluated when a camera's scene changed (or every
  period), one at a time per watch and camera; they join the batch after waiting questions and
  before captions, so a question never waits behind them.
No rclpy here: the node (node.py) turns messages into calls and answers into messages.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from ..runtime.answer_types import AnswerType
from ..runtime.change import cell_means, scene_changed
from ..runtime.errors import ImageError, VLMError
from ..runtime.generation import GenerationParams
from ..runtime.types import Answer, Timings
from .watches import Watch, Watches


@dataclass
class Frame:
    """A frame as it arrived, and the bridge function that turns it into RGB when first needed."""

    msg: Any  # sensor_msgs/Image or CompressedImage; its header is passed through untouched
    to_rgb: Callable[[Any], np.ndarray]  # bridge.imgmsg_to_rgb or bridge.compressed_imgmsg_to_rgb
    received: float  # time.monotonic() at arrival
    _rgb: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def header(self):
        return self.msg.header

    @property
    def rgb(self) -> np.ndarray:
        """H x W x 3 uint8 RGB, converted once (ImageError when the message cannot be)."""
        if self._rgb is None:
            self._rgb = self.to_rgb(self.msg)
        return self._rgb


@dataclass
class Job:
    """One question. The worker fills `answer` or `error`, then sets `done`."""

    frame: Frame
    camera: str
    question: Optional[str]  # None: a caption
    params: GenerationParams
    answer_type: Optional[AnswerType] = None  # None: free text
    history: tuple = ()  # earlier turns of its conversation: ((question, answer), ...)
    conversation: str = ""  # its conversation's id ("" for a question of its own)
    on_text: Optional[Callable[[str, int], None]] = None  # (text so far, tokens) after each piece
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    answer: Optional[Answer] = None
    error: str = ""
    stopped: str = ""  # why the worker stopped it (e.g. "node deactivated"); "" when it was not
    queued_s: float = 0.0  # time.monotonic() when it was queued
    waited_s: float = 0.0  # how long it waited for a free row


@dataclass
class _Caption:
    """A caption in the batch: what publishing it needs."""

    camera: str
    frame: Frame  # its RGB is converted once and kept (Frame.rgb)
    means: np.ndarray  # the frame's cell means (unchanged-scene check)
    key: tuple  # (caption prompt, generation params)


@dataclass
class _WatchEval:
    """A watch's evaluation in the batch."""

    watch: Watch
    camera: str
    frame: Frame


@dataclass
class CameraStats:
    received: int = 0
    dropped: int = 0  # replaced before inference used them
    refused: int = 0  # could not be converted (on arrival by the node's check, or when used)
    captions: int = 0  # computed
    reused: int = 0  # captions re-published for an unchanged frame
    last_caption_at: float = 0.0


@dataclass
class _Scene:
    """What inference last used of a camera: its cell means, pixels, and caption (if it was one)."""

    means: np.ndarray
    rgb: np.ndarray
    caption: Optional[Answer] = None
    caption_key: tuple = ()  # (caption prompt, generation params) the caption answered


@dataclass
class Snapshot:
    """The worker's counters at one moment, copied under its lock (for /diagnostics)."""

    cameras: Dict[str, CameraStats]
    answers: int
    busy_refusals: int
    waiting: int
    last_timings: Optional[Timings]
    decoding: int = 0  # answers in the batch now
    decode_tokens: int = 0  # tokens the batched decoder steps produced since start (all rows)
    decode_s: float = 0.0  # time spent in those steps: decode_tokens / decode_s is the aggregate rate


class Worker:
    def __init__(self, vlm, on_caption: Callable[[str, Frame, Answer], None],
                 on_answer: Optional[Callable[[Job], None]] = None, log_error: Callable[[str], None] = print,
                 log_refused: Callable[[str], None] = print, watches: Optional[Watches] = None,
                 on_watch: Optional[Callable] = None):
        """on_watch(event or None) when an evaluation changed a watch's published state (watches.py)."""
        self.vlm = vlm
        self.on_caption = on_caption
        self.on_answer = on_answer
        self.log_error = log_error
        self.log_refused = log_refused  # a camera frame that cannot be converted (the node throttles it)
        self.caption_rate_hz = 0.0
        self.caption_prompt: Optional[str] = None
        self.caption_params = GenerationParams()
        self.change_threshold = 0.0  # grey levels; 0: every frame is a new scene
        self._scenes: Dict[str, _Scene] = {}  # per camera: the last frame inference used
        self.max_queue = 2
        self._frames: Dict[str, Optional[Frame]] = {}
        self._fresh: Dict[str, bool] = {}  # newest frame not yet used by a caption
        self.stats: Dict[str, CameraStats] = {}
        self._asks: Deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self._busy_refusals = 0
        self._answers = 0
        self._last_timings: Optional[Timings] = None
        self._asking: List[Job] = []  # questions being answered (in the batch)
        self._captioning: set = set()  # cameras whose caption is in the batch
        self._stopping = threading.Event()  # cancels the captions in the batch when the worker stops
        self._batch = None  # the batch the thread decodes (its counters are read by snapshot)
        self.watches = watches if watches is not None else Watches()
        self.on_watch = on_watch
        self.watch_params = GenerationParams(max_new_tokens=64)

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
            waiting = len(self._asks) + bool(self._asking)  # those being answered wait for none
            if waiting > self.max_queue:
                self._busy_refusals += 1
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
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="mobilevlm-inference", daemon=True)
            self._thread.start()

    def stop(self, reason: str = "node stopped") -> None:
        """End the thread; waiting questions fail and running answers are cancelled, all with `reason`."""
        with self._cv:
            self._running = False
            for job in self._asks:
                job.stopped = job.error = reason
                job.done.set()
            self._asks.clear()
            for job in self._asking:
                job.stopped = reason
                job.cancel.set()
            self._stopping.set()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _next(self, wait: bool):
        """The next piece of work to start: ("ask", job) | ("caption", camera, frame); None when
        there is none now (`wait`: after waiting for some) or the worker is stopping."""
        with self._cv:
            while self._running:
                if self._asks:
                    job = self._asks.popleft()
                    self._asking.append(job)
                    return ("ask", job)
                now = time.monotonic()
                for cam, frame in self._frames.items():
                    watch = self.watches.next_due(cam, frame.received, now) if frame is not None else None
                    if watch is not None:
                        return ("watch", watch, cam, frame)
                pause = 0.5
                if self.caption_rate_hz > 0:
                    now, period = time.monotonic(), 1.0 / self.caption_rate_hz
                    # The camera due longest first: when inference cannot keep up with the rate,
                    # the cameras take turns instead of the first one named taking every slot.
                    waiting = [(self.stats[c].last_caption_at + period, c) for c, fresh in self._fresh.items()
                               if fresh and c not in self._captioning]
                    due, cam = min(waiting, default=(None, None))
                    if cam is not None and due <= now:
                        self._fresh[cam] = False
                        self.stats[cam].last_caption_at = now
                        self._captioning.add(cam)
                        return ("caption", cam, self._frames[cam])
                    if cam is not None:
                        pause = min(pause, due - now)
                if not wait:
                    return None
                self._cv.wait(timeout=max(pause, 0.001))
            return None

    def _loop(self) -> None:
        batch = self._batch = self.vlm.batch()
        while self._running or batch.sequences:
            # Join what is due while rows are free; wait for work only when nothing decodes.
            while batch.free > 0:
                work = self._next(wait=not batch.sequences)
                if work is None:
                    break
                if work[0] == "ask":
                    self._start_answer(batch, work[1])
                elif work[0] == "watch":
                    self._start_watch(batch, *work[1:])
                else:
                    self._start_caption(batch, work[1], work[2])
                work = None  # a finished question's frame (a request image: megabytes) is not kept while idle
            if batch.sequences:
                self._step(batch)

    def _step(self, batch) -> None:
        """One token for every sequence; those that ended are published."""
        try:
            ended = batch.step()
        except Exception as e:  # an engine failure: every sequence of the step fails, the worker goes on
            ended, error = batch.clear(), f"inference failed: {type(e).__name__}: {e}"
            self.log_error(error)
            for seq in ended:
                self._finish(seq.tag, None, error)
            return
        for seq in ended:
            self._finish(seq.tag, seq.answer, "")

    def _finish(self, work, answer: Optional[Answer], error: str) -> None:
        """A sequence left the batch: publish its caption or complete its question."""
        if isinstance(work, Job):
            self._complete(work, answer, error)
            return
        if isinstance(work, _WatchEval):
            self._watched(work, answer, error)
            return
        if error:
            self.log_error(f"caption of camera '{work.camera}' failed: {error}")
        with self._cv:
            self._captioning.discard(work.camera)
        if answer is None or answer.finish_reason == "cancelled":  # failed, or the worker stopped
            return
        camera, frame = work.camera, work.frame
        answer.timings.queue_s = time.monotonic() - frame.received - answer.timings.total_s
        self._scenes[camera] = _Scene(work.means, frame.rgb, answer, work.key)
        with self._cv:
            self.stats[camera].captions += 1
            self._last_timings = answer.timings
        self.on_caption(camera, frame, answer)

    def _same_scene(self, camera: str, rgb: np.ndarray) -> "tuple[Optional[_Scene], np.ndarray]":
        """(the camera's last scene if `rgb` still shows it, else None; rgb's cell means)."""
        means = cell_means(rgb) if self.change_threshold > 0 else np.zeros(0, np.float32)
        last = self._scenes.get(camera)
        if (last is None or self.change_threshold <= 0
                or scene_changed(means, last.means, self.change_threshold)):
            return None, means
        return last, means

    def _start_caption(self, batch, camera: str, frame: Frame) -> None:
        """Caption `frame`: re-published at once for an unchanged scene, else joins the batch."""
        try:
            rgb = frame.rgb
        except ImageError as e:
            with self._cv:
                self.stats[camera].refused += 1
                self._captioning.discard(camera)
            self.log_refused(f"camera '{camera}': frame refused: {e}")
            return
        key = (self.caption_prompt, self.caption_params)
        last, means = self._same_scene(camera, rgb)
        if last is not None and last.caption is not None and last.caption_key == key:
            with self._cv:
                self.stats[camera].reused += 1
                self._captioning.discard(camera)
            self.on_caption(camera, frame, replace(last.caption, timings=Timings(), reused=True))
            return
        try:
            batch.add(rgb, self.caption_prompt, self.caption_params, cancel=self._stopping,
                      tag=_Caption(camera, frame, means, key))
        except Exception as e:  # an engine failure: log, keep captioning the next frames
            with self._cv:
                self._captioning.discard(camera)
            self.log_error(f"caption of camera '{camera}' failed: {e}")

    def _start_watch(self, batch, watch: Watch, camera: str, frame: Frame) -> None:
        """Evaluate `watch` on `frame` if its scene changed since the watch's last evaluation (or its
        period is up); joins the batch like a question."""
        try:
            rgb = frame.rgb
        except ImageError:  # counted and logged where the caption meets it
            self.watches.finished(watch, camera)
            return
        threshold = self.change_threshold

        def changed(a: np.ndarray, b: np.ndarray) -> bool:
            return threshold <= 0 or scene_changed(a, b, threshold)

        if not self.watches.must_evaluate(watch, camera, cell_means(rgb), changed, time.monotonic(),
                                          frame.received):
            return
        try:
            batch.add(rgb, watch.question, self.watch_params, cancel=self._stopping,
                      tag=_WatchEval(watch, camera, frame), answer_type=watch.answer_type)
        except Exception as e:  # a bad type was refused when the watch was added; an engine failure
            self.watches.finished(watch, camera)
            self.log_error(f"watch '{watch.name}' on camera '{camera}' failed: {e}")

    def _watched(self, work: _WatchEval, answer: Optional[Answer], error: str) -> None:
        if error or answer is None or answer.error:
            self.log_error(f"watch '{work.watch.name}' on camera '{work.camera}': "
                           f"{error or (answer.error if answer else 'no answer')}")
        ok = answer is not None and not answer.error and answer.finish_reason != "cancelled"
        value, value_json, confidence = (answer.value, answer.value_json, answer.confidence) if ok \
            else (None, "", 0.0)
        changed, event = self.watches.record(work.watch, work.camera, value, value_json, confidence,
                                             work.frame.header)
        if changed and self.on_watch is not None:
            self.on_watch(event)

    def _question_image(self, job: Job) -> np.ndarray:
        """The pixels to ask about: for a camera's frame that shows the scene inference last saw,
        that frame (its image prefix is still in the decoder's cache); else the job's own."""
        rgb = job.frame.rgb
        if not job.camera:
            return rgb
        last, means = self._same_scene(job.camera, rgb)
        if last is not None:
            return last.rgb
        self._scenes[job.camera] = _Scene(means, rgb)
        return rgb

    def _start_answer(self, batch, job: Job) -> None:
        """A question joins the batch; one that cannot start (cancelled, bad input) fails alone."""
        shown = ""

        def on_text(text: str, tokens: int) -> None:
            nonlocal shown
            if text != shown:  # a token may add no text yet (held back): no empty feedback
                shown = text
                job.on_text(text, tokens)

        try:
            if job.cancel.is_set():  # cancelled while it waited
                raise VLMError("cancelled before it started")
            job.waited_s = time.monotonic() - job.queued_s
            rgb = job.frame.rgb if job.history else self._question_image(job)  # a conversation: its own
            batch.add(rgb, job.question, job.params, cancel=job.cancel,
                      on_text=on_text if job.on_text is not None else None, tag=job,
                      answer_type=job.answer_type, history=job.history)
        except (VLMError, ValueError) as e:
            self._complete(job, None, str(e))
        except Exception as e:  # an engine failure must not kill the worker thread
            error = f"inference failed: {type(e).__name__}: {e}"
            self.log_error(error)
            self._complete(job, None, error)

    def _complete(self, job: Job, answer: Optional[Answer], error: str) -> None:
        job.answer, job.error = answer, error
        if answer is not None:
            answer.timings.queue_s = job.waited_s
        with self._cv:
            if job in self._asking:
                self._asking.remove(job)
            if answer is not None:
                self._answers += 1
                self._last_timings = answer.timings
        job.done.set()
        if self.on_answer is not None and answer is not None:
            self.on_answer(job)

    def snapshot(self) -> Snapshot:
        with self._cv:
            batch = self._batch  # its counters are plain numbers: a read between two steps is fine
            return Snapshot(cameras={name: CameraStats(**vars(st)) for name, st in self.stats.items()},
                            answers=self._answers, busy_refusals=self._busy_refusals, waiting=len(self._asks),
                            last_timings=self._last_timings,
                            decoding=len(batch.sequences) if batch else 0,
                            decode_tokens=batch.decode_tokens if batch else 0,
                            decode_s=batch.decode_s if batch else 0.0)
