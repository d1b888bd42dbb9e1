"""Batched decode (runtime/batch.py): each sequence of a batch answers as it would alone.

Known answers come from the same engine run one sequence at a time (`VLM.describe`, cache row 0
alone): on the demo engine the greedy texts must be equal; on tiny random engines, whose logits
have near-ties everywhere, the batched logits' greedy choice must agree with the single-row run's
tokens at 0.99 or more, teacher-forced (batched and single-row kernels differ by float noise).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from conftest import batched_agreement, scene

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.runtime.errors import PromptError
from mobilevlm_ros.runtime.generation import GenerationParams
from mobilevlm_ros.runtime.vlm import VLM

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engines", "demo")
GREEDY = GenerationParams(max_new_tokens=48)


@pytest.fixture(scope="module")
def demo():
    """The demo engine twice: one sequence at a time, and four cache rows decoded together."""
    return VLM(DEMO, backend="cpu", threads=1), VLM(DEMO, backend="cpu", threads=1, max_batch=4)


def _requests():
    """Mixed prompt lengths: captions, a counting question and long grounding questions, 4 scenes."""
    out = []
    for seed in range(4):
        sc = S.make_scene(100 + seed)
        out.append((sc.image, None))
        phrase = next(p for p in (S.referring_phrase(sc, o) for o in sc.objects) if p)
        out.append((sc.image, S.grounding_question(phrase) if seed % 2 else S.count_question()))
    return out


def _run(batch, joins, cancel_at=None):
    """Step `batch` to the end; `joins`: {step: [(tag, rgb, question, params, cancel), ...]} added
    before that step; `cancel_at`: {step: event} set before that step. Returns {tag: Answer}."""
    ended, step = {}, 0
    while batch.sequences or any(k >= step for k in joins):
        for tag, rgb, question, params, cancel in joins.get(step, []):
            batch.add(rgb, question, params, cancel, tag=tag)
        if cancel_at and step in cancel_at:
            cancel_at[step].set()
        ended.update((s.tag, s.answer) for s in batch.step())
        step += 1
    return ended


def test_a_batch_answers_each_sequence_as_alone(demo):
    alone, batched = demo
    requests = _requests()
    want = [alone.describe(rgb, q, GREEDY).text for rgb, q in requests]
    assert len(set(want)) == len(want)  # different answers: a mixed-up row would show
    # Four at once, then each ending sequence's row is taken by the next request at the next step.
    batch = batched.batch()
    pending = list(enumerate(requests))
    got = {}
    while pending or batch.sequences:
        while pending and batch.free:
            i, (rgb, q) = pending.pop(0)
            batch.add(rgb, q, GREEDY, tag=i)
        for seq in batch.step():
            got[seq.tag] = seq.answer.text
            assert seq.answer.finish_reason in ("eos", "stop")
    assert [got[i] for i in range(len(requests))] == want


def test_sequences_finish_early_join_late_and_are_cancelled_alone(demo):
    alone, batched = demo
    (rgb0, q0), (rgb1, q1), (rgb2, q2), (rgb3, q3) = _requests()[:4]
    short = GenerationParams(max_new_tokens=3)
    want = {"short": alone.describe(rgb0, q0, short).text, "count": alone.describe(rgb1, q1, GREEDY).text,
            "late": alone.describe(rgb2, q2, GREEDY).text, "cancelled": alone.describe(rgb3, q3, GREEDY).text}
    cancel = threading.Event()
    batch = batched.batch()
    got = _run(batch, {0: [("short", rgb0, q0, short, None), ("count", rgb1, q1, GREEDY, None),
                           ("cancelled", rgb3, q3, GREEDY, cancel)],
                       # joins a running batch, into the row the short answer left
                       5: [("late", rgb2, q2, GREEDY, None)]},
               cancel_at={7: cancel})
    assert got["short"].finish_reason == "length" and got["short"].text == want["short"]
    assert got["count"].text == want["count"] and got["late"].text == want["late"]
    assert got["cancelled"].finish_reason == "cancelled" and len(got["cancelled"].token_ids) == 7
    assert want["cancelled"].startswith(got["cancelled"].text)  # until the cancel it says what it says alone
    assert len(want["cancelled"]) > len(got["cancelled"].text) + 5


def test_a_bad_request_fails_alone_and_the_batch_goes_on(demo):
    alone, batched = demo
    (rgb0, q0), (rgb1, q1) = _requests()[:2]
    batch = batched.batch()
    batch.add(rgb0, q0, GREEDY)
    batch.step()
    with pytest.raises(PromptError):
        batch.add(rgb1, "   ", GREEDY)  # empty question
    with pytest.raises(PromptError):
        batch.add(rgb1, "word " * 5000, GREEDY)  # longer than the context
    with pytest.raises(Exception):
        batch.add(np.zeros((0, 5, 3), np.uint8), q1, GREEDY)  # no pixels
    assert len(batch.sequences) == 1
    batch.sequences[0].tag = "first"
    batch.add(rgb1, q1, GREEDY, tag="second")
    got = _run(batch, {})
    assert {tag: a.text for tag, a in got.items()} == {
        "first": alone.describe(rgb0, q0, GREEDY).text, "second": alone.describe(rgb1, q1, GREEDY).text}
    full = batched.batch()
    for _ in range(4):
        full.add(rgb0, q0, GREEDY)
    with pytest.raises(RuntimeError, match="full"):
        full.add(rgb0, q0, GREEDY)
    # Row 0 decodes the batch's sequence: one-off answers and other batches must not write into it.
    with pytest.raises(RuntimeError, match="running sequence"):
        batched.describe(rgb1, q1, GREEDY)
    with pytest.raises(RuntimeError, match="full"):
        batched.batch().add(rgb1, q1, GREEDY)
    _run(full, {})
    assert batched.describe(rgb1, q1, GREEDY).text == alone.describe(rgb1, q1, GREEDY).text


def test_a_camera_frame_stays_cached_in_its_row_while_others_are_answered(demo):
    _, batched = demo
    requests = _requests()
    batch = batched.batch()
    for rgb, _ in requests[0:8:2]:  # four cameras' frames, one row each
        batch.add(rgb, None, GREEDY)
    _run(batch, {})
    # A question about each camera's frame, in another order: its row still holds the image prefix.
    for rgb, _ in reversed(requests[0:8:2]):
        seq = batch.add(rgb, S.count_question(), GREEDY)
        assert seq.generator.timings.vision_s == 0.0, "vision ran again: the frame's row was not reused"
    _run(batch, {})


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_batched_logits_agree_with_one_row_at_a_time_on_a_tiny_model(engines, precision):
    prompts = [(scene(0), None), (scene(1), "What colour is the block?"),
               (scene(2), "Describe every detail of this picture, one by one, from left to right."),
               (scene(3), None)]
    engine = engines("tiny", precision)
    alone = VLM(engine, backend="cpu", threads=1)
    batched = VLM(engine, backend="cpu", threads=1, max_batch=len(prompts))
    assert batched_agreement(alone, batched, prompts, 24) >= 0.99
