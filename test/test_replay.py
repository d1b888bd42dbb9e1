"""Rosbag replay through the node: the committed demo bag in, captions and answers out, compared."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from pathlib import Path  # noqa: E402

from conftest import sigint_default  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402

from mobilevlm_ros.ros import bags, report  # noqa: E402
from mobilevlm_ros.ros.bags import BagWriter  # noqa: E402
from mobilevlm_ros.ros.player import split_node_name  # noqa: E402
from mobilevlm_ros.tools import replay as R  # noqa: E402
from mobilevlm_ros.tools.demo_bag import record  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_BAG = os.path.join(ROOT, "test", "fixtures", "demo_bag")
DEMO_ENGINE = os.path.join(ROOT, "engines", "demo")
NO_DEMO_ENGINE = not os.path.isfile(os.path.join(DEMO_ENGINE, "manifest.json"))


def _frames(bag):
    return [bags.deserialize(t, raw) for topic, t, _, raw in bags.read(bag) if t == "sensor_msgs/msg/Image"]


def test_bags_read_of_no_topics_reads_nothing():
    assert list(bags.read(DEMO_BAG, set())) == []
    assert len(list(bags.read(DEMO_BAG, {bags.QUESTIONS_TOPIC}))) > 0


def test_demo_bag_is_reproducible_and_carries_truth(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    record(a, frames=3, seed=5)
    record(b, frames=3, seed=5, storage="mcap")
    fa, fb = _frames(a), _frames(b)
    assert [bytes(f.data) for f in fa] == [bytes(f.data) for f in fb]  # same frames, either storage
    assert fa[1].header.stamp.nanosec == 500_000_000
    truths = [json.loads(bags.deserialize(t, raw).data)
              for topic, t, _, raw in bags.read(a, {"/front/ground_truth"})]
    assert len(truths) == 3 and all(o["box"][2] > o["box"][0] for tr in truths for o in tr["objects"])
    # and the committed fixture is what the recorder makes
    committed = _frames(DEMO_BAG)
    recorded = _frames(_record_default(tmp_path))
    assert [bytes(f.data) for f in committed[:3]] == [bytes(f.data) for f in recorded[:3]]


def _record_default(tmp_path):
    out = str(tmp_path / "default")
    record(out, frames=3)
    return out


@pytest.fixture(scope="module")
def engine(engines):
    """The trained demo engine when it exists (its answers are right), else the tiny random one."""
    return DEMO_ENGINE if not NO_DEMO_ENGINE else engines("tiny", "fp32")


@pytest.fixture(scope="module")
def first_run(engine, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("replay") / "out")
    summary = R.replay(DEMO_BAG, out, engine, rate=0, annotated=True, quiet=True)
    return out, summary


def test_every_frame_captioned_with_its_header_and_bag_readable(first_run):
    out, summary = first_run
    frame_stamps = {(f.header.stamp.sec, f.header.stamp.nanosec, f.header.frame_id)
                    for f in _frames(DEMO_BAG)}
    # Read back with rosbags alone: our definitions are embedded in the bag.
    with AnyReader([Path(out)]) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types["/vlm/caption"] == "mobilevlm_ros/msg/Caption"
        assert types["/vlm/answers"] == "mobilevlm_ros/msg/GroundedAnswer"
        caps = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                if c.topic == "/vlm/caption"]
        annotated = [1 for c, _, _ in reader.messages() if c.topic == "/vlm/annotated"]
    assert {(c.header.stamp.sec, c.header.stamp.nanosec, c.header.frame_id) for c in caps} == frame_stamps
    assert len(caps) == len(frame_stamps) and annotated
    questions = sum(1 for _ in bags.read(DEMO_BAG, {bags.QUESTIONS_TOPIC}))
    assert summary["answers"] == questions


@pytest.mark.skipif(NO_DEMO_ENGINE, reason="engines/demo (the trained demo model) is not in this checkout")
def test_demo_model_grounds_most_questions(first_run):
    # The committed demo model gets 8/8 boxes (IoU >= 0.5) and 3/3 counts on this bag (greedy: every
    # run alike); a random model gets 0. "Most questions": more than half, with room for one miss
    # on another machine's float rounding.
    _, summary = first_run
    ok, n = summary["grounding_iou50"]
    assert n >= 5 and ok / n >= 0.75, summary
    ok, n = summary["counting"]
    assert ok / n >= 0.6, summary


def test_replay_keeps_recorded_timing(engine, tmp_path):
    import time

    t0 = time.monotonic()
    summary = R.replay(DEMO_BAG, str(tmp_path / "timed"), engine, rate=2.0, quiet=True)
    wall = time.monotonic() - t0
    assert summary["timing_error_max_s"] < 0.05  # each frame within 50 ms of its scaled bag time
    assert wall >= 3.5 / 2.0  # the 3.5 s bag at 2x does not finish early
    assert summary["captions"] >= 1


def test_compare_passes_on_identical_runs_and_fails_on_a_changed_bag(first_run, engine, tmp_path):
    out, _ = first_run
    again = str(tmp_path / "again")
    R.replay(DEMO_BAG, again, engine, rate=0, quiet=True)
    assert report.compare(again, out)["ok"]

    # A deliberately different expected bag: one caption's text changed.
    changed = str(tmp_path / "changed")
    from rclpy.serialization import serialize_message

    first = True
    with BagWriter(changed) as w:
        for topic, msgtype, ts, raw in bags.read(out):
            if topic == "/vlm/caption" and first:
                m = bags.deserialize(msgtype, raw)
                m.text = m.text + " and a purple hexagon"
                raw, first = serialize_message(m), False
            w.write(topic, msgtype, ts, raw)
    result = report.compare(again, changed)
    assert not result["ok"] and len(result["text_changes"]) == 1
    assert "purple hexagon" in result["text_changes"][0]["expected"]
    rc = R.main([DEMO_BAG, "--engine", engine, "--out", str(tmp_path / "third"), "--rate", "0",
                 "--compare", changed, "--json"])
    assert rc == 1


def test_replay_errors_are_clear(tmp_path, engine, capsys):
    assert R.main([str(tmp_path / "missing_bag"), "--engine", engine, "--out", str(tmp_path / "o")]) == 1
    assert "missing_bag" in capsys.readouterr().err


# -- the node's name: --node -------------------------------------------------------------------
def _questions():
    return sum(1 for _ in bags.read(DEMO_BAG, {bags.QUESTIONS_TOPIC}))


@pytest.fixture(scope="module")
def namespaced_run(engine, tmp_path_factory):
    """A replay that starts its node as /robot1/vlm_test: namespace and name both not the defaults."""
    out = str(tmp_path_factory.mktemp("replay_ns") / "out")
    rc = R.main([DEMO_BAG, "--engine", engine, "--node", "/robot1/vlm_test", "--out", out, "--rate", "0",
                 "--annotated", "--json"])
    assert rc == 0
    return out


def test_engine_node_takes_the_name_and_namespace_of_node(namespaced_run):
    # The node publishes ~/caption and serves ~/ask under its own name, and subscribes to its cameras in its
    # namespace (/robot1/front/image_raw): captions and answers arrive only when all three names are right.
    types = bags.topics(namespaced_run)
    assert types == {"/robot1/vlm_test/caption": "mobilevlm_ros/msg/Caption",
                     "/robot1/vlm_test/answers": "mobilevlm_ros/msg/GroundedAnswer",
                     "/robot1/vlm_test/annotated": "sensor_msgs/msg/Image"}
    captions = list(bags.read(namespaced_run, {"/robot1/vlm_test/caption"}))
    answers = list(bags.read(namespaced_run, {"/robot1/vlm_test/answers"}))
    assert len(captions) == len(_frames(DEMO_BAG)) and len(answers) == _questions()


def test_compare_pairs_runs_of_different_node_names(namespaced_run, first_run, tmp_path):
    out, _ = first_run  # recorded as /vlm
    result = report.compare(namespaced_run, out)
    assert result["ok"] and result["compared"] == len(_frames(DEMO_BAG)) + _questions(), result
    assert report.compare(out, namespaced_run)["ok"]
    # and the strip finds the annotated frames under the other name
    png = report.write_strip(namespaced_run, str(tmp_path / "strip.png"))
    assert os.path.getsize(png) > 0


@pytest.fixture
def running_node(engine):
    """A VLM node started apart from the replay, as /replay_test/eyes (own context: as another process)."""
    yield from _running_node(engine)


@pytest.fixture
def remapped_node(engine):
    """/replay_test/eyes with its camera input remapped, as a launch file on a robot would."""
    yield from _running_node(engine, ["--ros-args", "-r", "front/image_raw:=/robot_camera/color/raw"])


def _running_node(engine, cli_args=None):
    import threading

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from mobilevlm_ros.ros.node import VLMNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = VLMNode(name="eyes", namespace="/replay_test", context=context, cli_args=cli_args,
                   parameter_overrides=[
        Parameter("engine_dir", value=engine), Parameter("cameras", value=["front"]),
        Parameter("caption_rate_hz", value=30.0), Parameter("qos_reliability", value="reliable"),
        Parameter("qos_depth", value=10), Parameter("max_queue", value=8)])
    executor = MultiThreadedExecutor(num_threads=8, context=context)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        yield node.get_fully_qualified_name()
        executor.shutdown()
        spin.join(timeout=10)
    finally:
        node.trigger_shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_replay_talks_to_a_running_node_by_its_name(running_node, tmp_path):
    assert running_node == "/replay_test/eyes"
    out = str(tmp_path / "out")
    summary = R.replay(DEMO_BAG, out, None, rate=0, annotated=True, quiet=True, node=running_node)
    assert summary["captions"] == len(_frames(DEMO_BAG)) and summary["answers"] == _questions(), summary
    assert set(bags.topics(out)) == {"/replay_test/eyes/caption", "/replay_test/eyes/answers",
                                 "/replay_test/eyes/annotated"}


def test_replay_follows_the_inputs_a_remapped_node_reports(remapped_node, tmp_path):
    out = str(tmp_path / "out")
    summary = R.replay(DEMO_BAG, out, None, rate=0, quiet=True, node=remapped_node)
    assert summary["captions"] == len(_frames(DEMO_BAG)), summary


def test_camera_topic_flag_sends_frames_where_it_says(remapped_node, tmp_path):
    import rclpy

    from mobilevlm_ros.ros.player import reported_inputs

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        # No diagnostics of a node of that name: nothing reported (the replay falls back to the flags).
        node = rclpy.create_node("probe", context=context)
        assert reported_inputs(node, "/nobody/vlm", timeout=1.5) == {}
    finally:
        rclpy.try_shutdown(context=context)
    with pytest.raises(ValueError, match=r"names camera\(s\) \['rear'\] that bag .* has \['front'\]"):
        R.replay(DEMO_BAG, str(tmp_path / "x"), None, rate=0, quiet=True, node=remapped_node,
                 camera_topics={"rear": "/rear"})
    out = str(tmp_path / "out")
    summary = R.replay(DEMO_BAG, out, None, rate=0, quiet=True, node=remapped_node,
                       camera_topics={"front": "/robot_camera/color/raw"})
    assert summary["captions"] == len(_frames(DEMO_BAG)), summary


def test_camera_topic_flag_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        R.main([DEMO_BAG, "--out", str(tmp_path / "o"), "--camera-topic", "front:/x"])
    assert "expected CAMERA=/absolute/topic" in capsys.readouterr().err


@pytest.mark.parametrize("signum, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_replay_leaves_a_readable_bag_of_what_it_recorded(signum, status, engine, tmp_path):
    import signal
    import subprocess
    import sys

    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-m", "mobilevlm_ros.tools.replay", DEMO_BAG, "--engine", engine,
                             "--rate", "1", "--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, preexec_fn=sigint_default)
    printed = []
    try:
        while len([line for line in printed if line.startswith("[")]) < 3:  # three captions in
            line = proc.stdout.readline()
            assert line, f"replay ended early: {proc.wait()} {proc.stderr.read()}"
            printed.append(line)
        proc.send_signal(getattr(signal, signum))
        assert proc.wait(timeout=60) == status
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "what was recorded up to then is in" in err, err
    captions = [bags.deserialize(t, raw) for _, t, _, raw in bags.read(out, {"/vlm/caption"})]
    assert 3 <= len(captions) < len(_frames(DEMO_BAG))
    assert [report.caption_text(c) for c in captions[:3]] == [line.rstrip("\n") for line in printed
                                                               if line.startswith("[")][:3]


@pytest.mark.parametrize("name, reason", [
    ("vlm", "is not an absolute name"), ("robot1/vlm", "is not an absolute name"),
    ("/robot1/", "node name must not be empty"), ("/robot1/1vlm", "must not start with a number"),
    ("/robot 1/vlm", "namespace must not contain"), ("//vlm", "repeated '/'")])
def test_node_must_be_a_fully_qualified_node_name(name, reason, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        R.main([DEMO_BAG, "--node", name, "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --node" in err and reason in err and repr(name) in err
    assert not os.path.exists(tmp_path / "o")


def test_split_node_name():
    assert split_node_name("/vlm") == ("/", "vlm")
    assert split_node_name("/robot1/vlm") == ("/robot1", "vlm")
    assert split_node_name("/a/b/vlm_2") == ("/a/b", "vlm_2")


def test_a_static_bag_reuses_captions_and_a_moving_one_misses_no_change(engine, first_run, tmp_path):
    """A parked camera (one scene, fresh noise per frame): one caption computed, the rest re-published,
    the same texts as captioning every frame. The moving demo bag: nothing reused, the same outputs."""
    static = record(str(tmp_path / "static"), frames=6, static=True)
    every = R.replay(static, str(tmp_path / "every"), engine, rate=0, quiet=True, change_threshold=0.0)
    skipping = R.replay(static, str(tmp_path / "skipping"), engine, rate=0, quiet=True)  # the default
    assert (every["captions"], every["captions_reused"]) == (6, 0)
    assert (skipping["captions"], skipping["captions_reused"]) == (6, 5)
    assert skipping["caption_compute_s"] < every["caption_compute_s"]
    assert report.compare(str(tmp_path / "skipping"), str(tmp_path / "every"))["ok"]
    _, summary = first_run  # the moving bag, with the default change_threshold
    assert summary["captions_reused"] == 0


@pytest.mark.skipif(NO_DEMO_ENGINE, reason="needs the trained demo engine (engines/demo)")
def test_a_watch_in_a_replay_flips_where_the_scenes_change_and_is_recorded(tmp_path):
    """The demo bag's frames have a blue square in frames 3 and 4 only (0-based): with hysteresis 2 the
    watch settles on false, turns true at frame 4 and false again at frame 6; both events are
    recorded in the output bag and counted in the summary, with the typed answers' accuracy."""
    out = str(tmp_path / "out")
    summary = R.replay(DEMO_BAG, out, DEMO_ENGINE, rate=0, quiet=True,
                       watches={"blue_square": "Is there a blue square?"})
    assert summary["watch_events"] == 2
    (topic,) = [t for t, ty in bags.topics(out).items() if ty == "mobilevlm_ros/msg/WatchEvent"]
    events = [bags.deserialize(ty, raw) for _, ty, _, raw in bags.read(out, {topic})]
    stamps = [f.header.stamp for f in _frames(DEMO_BAG)]
    assert [(e.previous_value_json, e.value_json) for e in events] == [("false", "true"), ("true", "false")]
    assert [(e.header.stamp.sec, e.header.stamp.nanosec) for e in events] == [
        (stamps[i].sec, stamps[i].nanosec) for i in (4, 6)]
    ok, asked = summary["typed"]
    assert asked == 11 and ok >= 10, summary["typed"]
