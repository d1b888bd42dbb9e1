"""The inference worker without ROS: latest-frame semantics, conversion only of frames it uses."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest

from mobilevlm_ros.ros.worker import Frame, Worker
from mobilevlm_ros.runtime.errors import ImageError
from mobilevlm_ros.runtime.generation import GenerationParams
from mobilevlm_ros.runtime.vlm import VLM

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engines", "demo")
RGB = np.full((60, 80, 3), 200, np.uint8)


@pytest.fixture(scope="module")
def vlm():
    return VLM(DEMO, backend="cpu", threads=1)


def _wait(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _worker(vlm, captions, refused_logs=None):
    w = Worker(vlm, on_caption=lambda camera, frame, answer: captions.append((frame.msg.n, answer.text)),
               log_refused=(refused_logs.append if refused_logs is not None else print))
    w.caption_rate_hz, w.caption_params = 30.0, GenerationParams(max_new_tokens=4)
    w.add_camera("front")
    return w


def test_frames_replaced_before_use_are_never_converted(vlm):
    converted, captions = [], []

    def to_rgb(msg):
        converted.append(msg.n)
        return RGB

    w = _worker(vlm, captions)
    for n in range(5):  # the worker is not running yet: each frame replaces the one before
        w.put_frame("front", Frame(SimpleNamespace(n=n, header=None), to_rgb, time.monotonic()))
    w.start()
    try:
        _wait(lambda: captions)
    finally:
        w.stop()
    assert converted == [4] and [n for n, _ in captions] == [4]
    st = w.snapshot().cameras["front"]
    assert (st.received, st.dropped, st.captions) == (5, 4, 1)


def test_a_frame_that_fails_conversion_is_refused_and_the_next_one_captioned(vlm):
    captions, logs = [], []

    def to_rgb(msg):
        if msg.n == 0:
            raise ImageError("corrupt JPEG data")
        return RGB

    w = _worker(vlm, captions, logs)
    w.start()
    try:
        w.put_frame("front", Frame(SimpleNamespace(n=0, header=None), to_rgb, time.monotonic()))
        _wait(lambda: w.snapshot().cameras["front"].refused == 1)
        w.put_frame("front", Frame(SimpleNamespace(n=1, header=None), to_rgb, time.monotonic()))
        _wait(lambda: captions)
    finally:
        w.stop()
    assert [n for n, _ in captions] == [1]
    assert logs == ["camera 'front': frame refused: corrupt JPEG data"]
    snap = w.snapshot()
    assert (snap.cameras["front"].captions, snap.last_timings.new_tokens > 0) == (1, True)
