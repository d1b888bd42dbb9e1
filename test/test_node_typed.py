"""Typed answers, follow-up questions and standing watches through the node: real rclpy and DDS,
the in-process harness of test_node.py. Answers are checked against the runtime asked directly
with the same image, question, type and earlier turns; the watch against known scenes."""

from __future__ import annotations

import json
import os
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from test_node import TIMEOUT, Harness, engine, frame, image_msg, ros, runtime, wait_for  # noqa: E402,F401

from mobilevlm_ros.action import Ask as AskAction  # noqa: E402
from mobilevlm_ros.demo import scenes as S  # noqa: E402
from mobilevlm_ros.msg import AnswerType as AnswerTypeMsg  # noqa: E402
from mobilevlm_ros.msg import WatchEvent, WatchStates  # noqa: E402
from mobilevlm_ros.runtime.answer_types import AnswerType  # noqa: E402
from mobilevlm_ros.runtime.generation import GenerationParams  # noqa: E402
from mobilevlm_ros.runtime.vlm import VLM  # noqa: E402
from mobilevlm_ros.srv import AddWatch, RemoveWatch  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engines", "demo")
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture
def harness(ros, engine):  # noqa: F811
    made = []

    def make(engine_dir=engine, **params):
        h = Harness(engine_dir, **params)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def call(h, srv_type, name, request):
    cli = h.client.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=TIMEOUT)
    fut = cli.call_async(request)
    wait_for(fut.done, what=f"response of {name}")
    return fut.result()


def typed(kind, choices=(), minimum=None, maximum=None, schema=""):
    return AnswerTypeMsg(kind=kind, choices=list(choices), minimum=[] if minimum is None else [minimum],
                         maximum=[] if maximum is None else [maximum], schema=schema)


def test_typed_answers_by_service_and_action_match_the_runtime(harness, runtime):  # noqa: F811
    h = harness().start()
    rgb = frame(21)
    h.publish("front", image_msg(rgb, stamp_s=5))
    wait_for(lambda: h.node.worker.latest("front") is not None)
    r = h.ask(question="Is the door open?", answer_type=typed("bool"), max_new_tokens=8)
    assert r.success, r.error
    want = runtime.describe(rgb, "Is the door open?", GenerationParams(max_new_tokens=8),
                            answer_type=AnswerType("bool"))
    a = r.answer
    assert (a.answer_type, a.value_bool, json.loads(a.value_json)) == ("bool", want.value, want.value)
    assert a.confidence == pytest.approx(want.confidence, rel=1e-5)
    assert list(a.alternatives) == ["Yes", "No"] and sum(a.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert a.header.stamp.sec == 5

    r = h.ask(question="How many?", answer_type=typed("integer", minimum=0, maximum=300), max_new_tokens=8)
    assert r.success, r.error
    want = runtime.describe(rgb, "How many?", GenerationParams(max_new_tokens=8),
                            answer_type=AnswerType("integer", minimum=0, maximum=300))
    assert r.answer.value_integer == want.value == json.loads(r.answer.value_json)
    assert list(r.answer.alternatives) == []  # a wide range: not a closed set

    from rclpy.action import ActionClient

    client = ActionClient(h.client, AskAction, "/vlm/ask")
    assert client.wait_for_server(timeout_sec=TIMEOUT)
    goal = AskAction.Goal(question="Which one?", answer_type=typed("choice", ["left", "right", "none"]),
                          max_new_tokens=8)
    fut = client.send_goal_async(goal)
    wait_for(fut.done, what="goal acceptance")
    res = fut.result().get_result_async()
    wait_for(res.done, what="action result")
    result = res.result().result
    want = runtime.describe(rgb, "Which one?", GenerationParams(max_new_tokens=8),
                            answer_type=AnswerType("choice", ("left", "right", "none")))
    assert result.success and result.answer.value_string == want.value


@pytest.mark.parametrize("answer_type, message", [
    (typed("colour"), "unknown answer type 'colour'"),
    (typed("choice", ["a", "a"]), "'a' is given more than once"),
    (typed("choice"), "needs at least one choice"),
    (typed("number", minimum=3.0, maximum=1.0), "minimum 3 is above maximum 1"),
    (typed("json", schema="{oops"), "the JSON schema is not JSON"),
    (typed("json", schema='{"type": "objectx"}'), "objectx"),
])
def test_bad_answer_types_get_the_reason_and_the_node_keeps_serving(harness, answer_type, message):
    h = harness().start()
    h.publish("front", image_msg(frame(22), stamp_s=1))
    wait_for(lambda: h.node.worker.latest("front") is not None)
    r = h.ask(question="What?", answer_type=answer_type)
    assert not r.success and message in r.error, r.error
    assert h.node.worker.snapshot().answers == 0  # refused before anything ran
    assert h.ask(question="What?").success


def test_a_typed_answer_cut_by_max_new_tokens_fails_clearly(harness):
    h = harness().start()
    h.publish("front", image_msg(frame(23), stamp_s=1))
    wait_for(lambda: h.node.worker.latest("front") is not None)
    schema = json.dumps({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
    r = h.ask(question="Who?", answer_type=typed("json", schema=schema), max_new_tokens=3)
    assert not r.success and "cut at max_new_tokens (3) before it was complete" in r.error
    assert r.answer.value_json == "" and r.answer.finish_reason == "length"


def test_follow_ups_are_about_the_conversations_image_and_bounded(harness, runtime):  # noqa: F811
    h = harness(conversation_max_turns=2).start()
    first, later = frame(31), frame(32)
    h.publish("front", image_msg(first, stamp_s=1))
    wait_for(lambda: h.node.worker.latest("front") is not None)
    r1 = h.ask(question="What is on the table?", conversation="new", max_new_tokens=6)
    assert r1.success, r1.error
    cid = r1.answer.conversation
    assert len(cid) == 16
    h.publish("front", image_msg(later, stamp_s=2))  # the camera moves on; the conversation does not
    wait_for(lambda: h.node.worker.latest("front").header.stamp.sec == 2)
    r2 = h.ask(question="What colour is it?", conversation=cid, max_new_tokens=6)
    assert r2.success, r2.error
    want = runtime.describe(first, "What colour is it?", GenerationParams(max_new_tokens=6),
                            history=[("What is on the table?", r1.answer.text)])
    assert r2.answer.text == want.text and r2.answer.header.stamp.sec == 1
    assert r2.answer.conversation == cid
    r3 = h.ask(question="And now?", conversation=cid, max_new_tokens=6)
    assert not r3.success and "has had its 2 turns" in r3.error
    r4 = h.ask(question="And now?", conversation="0123456789abcdef")
    assert not r4.success and "is unknown or expired" in r4.error
    r5 = h.ask(question="And now?", conversation=cid, image=image_msg(first, stamp_s=3))
    assert not r5.success and "send no image" in r5.error

    h.node.set_parameters([rclpy.parameter.Parameter("conversation_idle_s", value=1.0)])
    r = h.ask(question="What is here?", conversation="new", max_new_tokens=4)
    time.sleep(1.3)
    expired = h.ask(question="Still?", conversation=r.answer.conversation)
    assert not expired.success and "unknown or expired (idle over 1 s" in expired.error


# -- standing watches ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_runtime():
    return VLM(DEMO, backend="cpu", threads=1)


def scenes_where(demo_runtime, present: bool, count: int, start: int):
    """`count` scenes with (or without) a red circle on which the demo engine answers "Is there a red
    circle?" right with confidence >= 0.9: the watch's logic is under test here, not the model."""
    out, seed = [], start
    question, bool_type = S.yesno_question("red", "circle"), AnswerType("bool")
    while len(out) < count:
        seed += 1
        scene = S.make_scene(seed, 320, 240)
        if (("red", "circle") in S.scene_multiset(scene)) != present:
            continue
        a = demo_runtime.describe(scene.image, question, GenerationParams(max_new_tokens=4),
                                  answer_type=bool_type)
        if a.value is present and a.confidence >= 0.9:
            out.append(scene.image)
    return out


def test_a_watch_flips_once_after_its_hysteresis_and_late_subscribers_see_its_state(harness, demo_runtime):
    h = harness(DEMO, cameras=["front"], threads=1, change_threshold=8.0).start()
    events, states = [], []
    h.client.create_subscription(WatchEvent, "/vlm/watch_events", events.append, 10)
    r = call(h, AddWatch, "/vlm/add_watch", AddWatch.Request(
        name="red_circle", question="Is there a red circle?", hysteresis=2, min_confidence=0.5))
    assert r.success, r.error
    absent, present = scenes_where(demo_runtime, False, 4, 500), scenes_where(demo_runtime, True, 4, 900)
    # absent, absent, present once (hysteresis holds), absent, then present to stay
    frames = [absent[0], absent[1], present[0], absent[2], absent[3], present[1], present[2], present[3]]
    for i, rgb in enumerate(frames):
        h.publish("front", image_msg(rgb, stamp_s=100 + i))
        wait_for(lambda: h.stats("watch.red_circle.front.evaluations") == i + 1, timeout=30,
                 what=f"evaluation of frame {i}")
    time.sleep(0.3)
    assert len(events) == 1, [(e.previous_value_json, e.value_json, e.header.stamp.sec) for e in events]
    e = events[0]
    assert (e.watch, e.camera, e.previous_value_json, e.value_json, e.value_bool) == (
        "red_circle", "front", "false", "true", True)
    assert e.header.stamp.sec == 106  # the second present frame in a row: hysteresis 2
    assert e.confidence >= 0.5

    late = rclpy.create_node("late_behavior_tree")  # joins after the flip
    late.create_subscription(WatchStates, "/vlm/watch_states", states.append, LATCHED)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(late)
    end = time.monotonic() + 10
    while not states and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    late.destroy_node()
    assert states, "a late subscriber got no watch state"
    (st,) = states[-1].states
    assert (st.watch, st.camera, st.known, st.value_json, st.value_bool, st.changes) == (
        "red_circle", "front", True, "true", True, 1)
    assert h.stats("watch.red_circle.front.changes") == 1

    r = call(h, RemoveWatch, "/vlm/remove_watch", RemoveWatch.Request(name="red_circle"))
    assert r.success
    r = call(h, RemoveWatch, "/vlm/remove_watch", RemoveWatch.Request(name="red_circle"))
    assert not r.success and "no watch named 'red_circle'" in r.error


def test_bad_watches_are_refused_with_the_reason(harness):
    h = harness(cameras=["front"]).start()

    def add(**fields):
        return call(h, AddWatch, "/vlm/add_watch", AddWatch.Request(**fields))

    assert "unknown camera 'rear'" in add(name="w", question="Open?", cameras=["rear"]).error
    assert "watch name '2w'" in add(name="2w", question="Open?").error
    assert "the question is empty" in add(name="w", question=" ").error
    assert "'a' is given more than once" in add(name="w", question="Which?",
                                                  answer_type=typed("choice", ["a", "a"])).error
    assert "no value to watch" in add(name="w", question="Where?", answer_type=typed("boxes")).error
    assert add(name="w", question="Is it open?").success


def test_params_file_watches_run_and_questions_do_not_wait_behind_them(harness):
    """A watch declared as parameters (as a params file gives them) evaluates every new frame
    (change_threshold 0); a question asked meanwhile is answered, not queued behind the watch."""
    h = harness(**{"cameras": ["front"], "change_threshold": 0.0, "watches": ["busy"],
                   "watch.busy.question": "Is it busy?", "watch.busy.hysteresis": 1}).start()
    for i in range(10):
        h.publish("front", image_msg(frame(40 + i), stamp_s=200 + i))
        time.sleep(0.05)
    wait_for(lambda: h.stats("watch.busy.front.evaluations") >= 1, what="the declared watch's evaluations")
    t0 = time.monotonic()
    r = h.ask(question="What is it?", max_new_tokens=4)
    assert r.success and time.monotonic() - t0 < 10
