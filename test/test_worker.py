"""The inference worker without ROS: latest-frame semantics, conversion only of frames it uses."""

from __future__ import annotations

import os
import threading
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


@pytest.fixture(scope="module")
def vlm4():
    return VLM(DEMO, backend="cpu", threads=1, max_batch=4)


def _scene_frame(seed: int, n: int = 0) -> Frame:
    from mobilevlm_ros.demo.scenes import make_scene

    rgb = make_scene(seed).image
    return Frame(SimpleNamespace(n=n, header=None), lambda m: rgb, time.monotonic())


def test_cameras_are_captioned_together_and_answer_as_alone(vlm, vlm4):
    """Four cameras' captions and two questions decode in one batch; each text equals the one the
    same engine gives alone, and a bad question inside the batch fails alone."""
    from mobilevlm_ros.ros.worker import Job

    params = GenerationParams(max_new_tokens=24)
    cameras = ["front", "left", "right", "back"]
    frames = {cam: _scene_frame(300 + i) for i, cam in enumerate(cameras)}
    want = {cam: vlm.describe(f.rgb, None, params).text for cam, f in frames.items()}
    want_count = vlm.describe(frames["left"].rgb, "How many objects are there?", params).text
    batch_sizes = []
    step = vlm4.decoder.step
    vlm4.decoder.step = lambda rows, embeds: (batch_sizes.append(len(rows)), step(rows, embeds))[1]
    captions = {}
    w = Worker(vlm4, on_caption=lambda camera, frame, answer: captions.setdefault(camera, answer.text))
    w.caption_rate_hz, w.caption_params, w.max_queue = 0.01, params, 4
    for cam in cameras:
        w.add_camera(cam)
        w.put_frame(cam, frames[cam])
    jobs = [Job(frame=frames["left"], camera="left", question="How many objects are there?", params=params),
            Job(frame=frames["left"], camera="left", question="   ", params=params)]
    try:
        w.start()
        _wait(lambda: len(captions) >= 2)  # captions running: the questions join them
        assert all(w.submit(job) for job in jobs)
        for job in jobs:
            assert job.done.wait(60)
        _wait(lambda: len(captions) == 4)
    finally:
        w.stop()
        vlm4.decoder.step = step
    assert captions == want
    assert jobs[0].answer.text == want_count and not jobs[0].error
    assert jobs[1].answer is None and "empty" in jobs[1].error
    assert max(batch_sizes) >= 3, f"never decoded together: batch sizes {sorted(set(batch_sizes))}"


def test_a_cancel_in_a_batch_stops_only_that_answer(vlm4):
    from mobilevlm_ros.ros.worker import Job

    long = GenerationParams(max_new_tokens=200, ignore_eos=True)
    texts = []
    jobs = [Job(frame=_scene_frame(310 + i), camera="", question="Describe the image.", params=long,
                on_text=(lambda text, tokens: texts.append(tokens)) if i == 0 else None) for i in range(3)]
    w = Worker(vlm4, on_caption=lambda *a: None)
    w.max_queue = 4
    w.start()
    try:
        assert all(w.submit(job) for job in jobs)
        _wait(lambda: texts and texts[-1] >= 5)
        jobs[0].cancel.set()
        assert jobs[0].done.wait(30)
        assert not jobs[1].done.is_set() and not jobs[2].done.is_set()  # the others go on
        for job in jobs[1:]:
            assert job.done.wait(120)
    finally:
        w.stop()
    assert jobs[0].answer.finish_reason == "cancelled" and len(jobs[0].answer.token_ids) < 200
    assert [j.answer.finish_reason for j in jobs[1:]] == ["length", "length"]
    assert all(len(j.answer.token_ids) == 200 for j in jobs[1:])


def test_questions_about_different_cameras_keep_each_cameras_image_cached(vlm4):
    from mobilevlm_ros.ros.worker import Job

    w = Worker(vlm4, on_caption=lambda *a: None)
    w.change_threshold = 8.0
    cameras = ["front", "left", "right"]
    for cam in cameras:
        w.add_camera(cam)
    w.start()
    answers = []
    try:
        for cam in cameras + cameras:  # each camera, then each again after the others
            job = Job(frame=_scene_frame(320 + cameras.index(cam)), camera=cam,
                      question="How many objects are there?", params=GenerationParams(max_new_tokens=4))
            assert w.submit(job) and job.done.wait(60)
            answers.append(job.answer)
    finally:
        w.stop()
    assert [a.timings.vision_s > 0 for a in answers] == [True] * 3 + [False] * 3


def test_cameras_take_turns_when_inference_cannot_keep_up(vlm):
    """Every camera always has a fresh frame and is always due: one at a time (max_batch 1), the
    captions go round the cameras instead of to the first one named."""
    order = []
    w = Worker(vlm, on_caption=lambda camera, frame, answer: order.append(camera))
    w.caption_rate_hz, w.caption_params = 1000.0, GenerationParams(max_new_tokens=4)
    cameras = ["a", "b", "c"]
    for cam in cameras:
        w.add_camera(cam)
    stop = threading.Event()

    def feed():  # a new frame on every camera all the time
        n = 0
        while not stop.is_set():
            for cam in cameras:
                w.put_frame(cam, Frame(SimpleNamespace(n=n, header=None), lambda m: RGB, time.monotonic()))
            n += 1
            time.sleep(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    w.start()
    try:
        _wait(lambda: len(order) >= 9)
    finally:
        w.stop()
        stop.set()
        feeder.join()
    assert sorted(order[:9]) == sorted(cameras * 3), order
