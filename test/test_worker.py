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


def _noisy_scene(seed: int, noise_seed: int) -> np.ndarray:
    from mobilevlm_ros.demo import scenes

    rgb = scenes.make_scene(seed).image
    noise = np.random.default_rng(noise_seed).normal(0, 3.0, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def test_an_unchanged_scene_reuses_its_caption_and_a_change_does_not(vlm):
    answers = []
    w = Worker(vlm, on_caption=lambda camera, frame, answer: answers.append((frame.msg.n, answer)))
    w.caption_rate_hz, w.caption_params, w.change_threshold = 1000.0, GenerationParams(max_new_tokens=16), 8.0
    w.add_camera("front")
    frames = [_noisy_scene(20_000_000, n) for n in range(3)] + [_noisy_scene(20_000_001, 3)]
    w.start()
    try:
        for n, rgb in enumerate(frames):  # one at a time: each is captioned, none dropped
            frame = Frame(SimpleNamespace(n=n, header=None), lambda m, rgb=rgb: rgb, time.monotonic())
            w.put_frame("front", frame)
            _wait(lambda: len(answers) == n + 1)
        w.caption_prompt = "How many objects are there?"  # another question: not the cached caption
        w.put_frame("front", Frame(SimpleNamespace(n=4, header=None), lambda m: frames[3], time.monotonic()))
        _wait(lambda: len(answers) == 5)
    finally:
        w.stop()
    reused = [a.reused for _, a in answers]
    assert reused == [False, True, True, False, False]
    first = answers[0][1]
    for _, a in answers[1:3]:  # the same text, no inference time
        assert (a.text, a.boxes, a.timings.total_s, a.timings.vision_s) == (first.text, first.boxes, 0.0, 0.0)
    assert answers[3][1].timings.vision_s > 0 and answers[4][1].prompt == "How many objects are there?"
    st = w.snapshot().cameras["front"]
    assert (st.captions, st.reused) == (3, 2)


def test_a_question_about_an_unchanged_frame_reuses_the_cached_image(vlm):
    from mobilevlm_ros.ros.worker import Job

    w = Worker(vlm, on_caption=lambda *a: None)
    w.caption_rate_hz, w.caption_params, w.change_threshold = 1000.0, GenerationParams(max_new_tokens=4), 8.0
    w.add_camera("front")
    w.start()
    try:
        w.put_frame("front", Frame(SimpleNamespace(header=None), lambda m: _noisy_scene(20_000_002, 0), 0.0))
        _wait(lambda: w.snapshot().cameras["front"].captions == 1)
        later = Frame(SimpleNamespace(header=None), lambda m: _noisy_scene(20_000_002, 1), 0.0)  # new noise
        job = Job(frame=later, camera="front", question="How many objects are there?",
                  params=GenerationParams(max_new_tokens=4))
        assert w.submit(job)
        job.done.wait(30)
    finally:
        w.stop()
    assert job.answer is not None and job.answer.timings.vision_s == 0.0  # the image prefix was cached
