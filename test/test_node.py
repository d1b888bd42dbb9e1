"""The VLM node end to end: real rclpy, real DDS on loopback, a separate client node, the tiny engine.

Each test starts its own node (parameters as a user would pass them) and talks to it only
through topics, the service and the action, as a robot's other nodes would.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from action_msgs.msg import GoalStatus  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from mobilevlm_ros.action import Ask as AskAction  # noqa: E402
from mobilevlm_ros.msg import Caption  # noqa: E402
from mobilevlm_ros.ros.node import VLMNode  # noqa: E402
from mobilevlm_ros.runtime.generation import GenerationParams  # noqa: E402
from mobilevlm_ros.runtime.vlm import VLM  # noqa: E402
from mobilevlm_ros.srv import Ask as AskService  # noqa: E402

TIMEOUT = 20.0


def wait_for(predicate, timeout=TIMEOUT, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def frame(seed: int, w: int = 64, h: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = rng.integers(0, 256, 3)
    return img


def image_msg(rgb: np.ndarray, stamp_s: int, frame_id: str = "cam_optical") -> Image:
    m = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3,
              data=rgb.tobytes())
    m.header.stamp = Time(sec=stamp_s, nanosec=123)
    m.header.frame_id = frame_id
    return m


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="module")
def engine(engines):
    return engines("tiny", "fp32")


@pytest.fixture(scope="module")
def runtime(engine):
    """The runtime on its own, to check the node against."""
    return VLM(engine, backend="cpu", threads=1)


class Harness:
    """A VLM node and a client node spinning on one executor in a background thread."""

    def __init__(self, engine: str, **params):
        defaults = dict(engine_dir=engine, cameras=["front"], caption_rate_hz=0.0, max_new_tokens=8,
                        threads=1, diagnostics_period_s=0.2, backend="cpu")
        defaults.update(params)
        self.node = VLMNode(parameter_overrides=[Parameter(k, value=v) for k, v in defaults.items()])
        self.client = rclpy.create_node(f"test_client_{id(self)}")
        self.captions, self.diagnostics = [], []
        self.client.create_subscription(Caption, "/vlm/caption", self.captions.append, 50)
        self.client.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        self.pubs = {}
        self.executor = MultiThreadedExecutor(num_threads=8)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def start(self):
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        return self

    def publish(self, camera: str, msg, compressed: bool = False):
        topic = f"/{camera}/image_raw" + ("/compressed" if compressed else "")
        if topic not in self.pubs:
            self.pubs[topic] = self.client.create_publisher(CompressedImage if compressed else Image, topic,
                                                            qos_profile_sensor_data)
            wait_for(lambda: self.pubs[topic].get_subscription_count() > 0, what=f"subscriber on {topic}")
        self.pubs[topic].publish(msg)

    def ask(self, **fields):
        cli = self.client.create_client(AskService, "/vlm/ask")
        assert cli.wait_for_service(timeout_sec=TIMEOUT)
        fut = cli.call_async(AskService.Request(**fields))
        wait_for(fut.done, what="service response")
        return fut.result()

    def stats(self, key: str) -> int:
        wait_for(lambda: self.diagnostics, what="diagnostics")
        n = len(self.diagnostics)
        wait_for(lambda: len(self.diagnostics) > n, what="fresh diagnostics")
        values = {kv.key: kv.value for kv in self.diagnostics[-1].status[0].values}
        return int(values[key])

    def close(self):
        if self.node.worker is not None:
            self.node.worker.stop()
        self.executor.shutdown()
        self.node.destroy_node()
        self.client.destroy_node()


@pytest.fixture
def harness(ros, engine):
    made = []

    def make(**params):
        h = Harness(engine, **params)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_caption_carries_source_header_and_the_runtimes_text(harness, runtime):
    h = harness(caption_rate_hz=5.0, caption_prompt="What do you see?").start()
    rgb = frame(1)
    h.publish("front", image_msg(rgb, stamp_s=1234))
    wait_for(lambda: h.captions, what="a caption")
    c = h.captions[0]
    assert (c.header.stamp.sec, c.header.stamp.nanosec, c.header.frame_id) == (1234, 123, "cam_optical")
    assert c.camera == "front" and c.prompt == "What do you see?"
    expected = runtime.describe(rgb, "What do you see?", GenerationParams(max_new_tokens=8))
    assert c.text == expected.text
    assert c.timings.new_tokens == len(expected.token_ids) and c.model_id == "synthetic/tiny"


def test_service_answers_on_camera_frame_and_on_request_image(harness, runtime):
    h = harness().start()
    rgb = frame(2)
    h.publish("front", image_msg(rgb, stamp_s=55))
    wait_for(lambda: h.node.worker.latest("front") is not None, what="frame at the node")
    r = h.ask(question="Is there a red circle?", camera="front", max_new_tokens=6)
    assert r.success, r.error
    expected = runtime.describe(rgb, "Is there a red circle?", GenerationParams(max_new_tokens=6))
    assert r.answer.text == expected.text and r.answer.header.stamp.sec == 55
    assert (r.answer.image_width, r.answer.image_height, r.answer.camera) == (64, 48, "front")

    other = frame(3, w=80, h=30)  # the request's own image overrides the camera
    r = h.ask(question="Is there a red circle?", image=image_msg(other, stamp_s=77, frame_id="upload"))
    assert r.success, r.error
    assert r.answer.text == runtime.describe(other, "Is there a red circle?",
                                             GenerationParams(max_new_tokens=8)).text
    assert (r.answer.header.frame_id, r.answer.image_width, r.answer.image_height,
            r.answer.camera) == ("upload", 80, 30, "")


def test_service_errors_are_clear(harness):
    h = harness().start()
    assert "no frame from camera 'front' yet" in h.ask(question="hello?").error
    assert "unknown camera 'side'" in h.ask(question="hello?", camera="side").error
    assert "question is empty" in h.ask(question="  ").error
    bad = Image(height=2, width=2, encoding="weird16", step=8, data=bytes(16))
    r = h.ask(question="hello?", image=bad)
    assert not r.success and "weird16" in r.error
    h.publish("front", image_msg(frame(4), stamp_s=1))
    wait_for(lambda: h.node.worker.latest("front") is not None)
    assert h.ask(question="hello?").success  # and it keeps serving


def _send_goal(h, **fields):
    client = ActionClient(h.client, AskAction, "/vlm/ask")
    assert client.wait_for_server(timeout_sec=TIMEOUT)
    feedback = []
    fut = client.send_goal_async(AskAction.Goal(**fields),
                                 feedback_callback=lambda m: feedback.append(m.feedback))
    wait_for(fut.done, what="goal acceptance")
    handle = fut.result()
    assert handle.accepted
    return handle, feedback


def test_action_streams_feedback_and_result(harness, runtime):
    h = harness().start()
    rgb = frame(5)
    h.publish("front", image_msg(rgb, stamp_s=9))
    wait_for(lambda: h.node.worker.latest("front") is not None)
    handle, feedback = _send_goal(h, question="Describe it.", max_new_tokens=12)
    res_fut = handle.get_result_async()
    wait_for(res_fut.done, what="action result")
    res = res_fut.result()
    assert res.status == GoalStatus.STATUS_SUCCEEDED and res.result.success
    expected = runtime.describe(rgb, "Describe it.", GenerationParams(max_new_tokens=12))
    assert res.result.answer.text == expected.text
    assert len(feedback) >= 2, "feedback should stream piece by piece"
    assert [f.tokens for f in feedback] == sorted(f.tokens for f in feedback)
    assert all(expected.text.startswith(f.text.strip()) for f in feedback)


def test_cancel_stops_within_a_token_and_busy_refusal(harness, engine):
    h = harness(max_queue=0).start()
    h.publish("front", image_msg(frame(6), stamp_s=3))
    wait_for(lambda: h.node.worker.latest("front") is not None)
    # Slow the worker's decoder down so a long answer is surely running while we test.
    decoder = h.node.vlm.decoder
    original = decoder.run
    decoder.run = lambda e, *row: (time.sleep(0.02), original(e, *row))[1]
    handle, feedback = _send_goal(h, question="Tell a long story.", max_new_tokens=300, temperature=1.0)
    wait_for(lambda: feedback, what="first feedback")

    busy = h.ask(question="Anything?")  # the queue holds 0 waiting questions: refused at once
    assert not busy.success and busy.error.startswith("busy:")

    tokens_at_cancel = feedback[-1].tokens
    cancel = handle.cancel_goal_async()
    wait_for(cancel.done, what="cancel response")
    res_fut = handle.get_result_async()
    wait_for(res_fut.done, what="cancelled result")
    res = res_fut.result()
    assert res.status == GoalStatus.STATUS_CANCELED
    assert res.result.answer.finish_reason == "cancelled"
    # a token or two in flight, not hundreds
    assert res.result.answer.timings.new_tokens <= tokens_at_cancel + 3
    decoder.run = original
    assert h.ask(question="Anything?").success  # free again


def test_bad_frames_are_refused_and_the_next_good_frame_is_served(harness):
    h = harness(caption_rate_hz=20.0).start()
    bad = [
        Image(height=4, width=4, encoding="xyz123", step=12, data=bytes(48)),
        Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(20)),  # truncated
        Image(height=4, width=4, encoding="rgb8", step=5, data=bytes(48)),  # step shorter than a row
        Image(height=0, width=4, encoding="rgb8", step=12, data=b""),
    ]
    for m in bad:  # spaced out: with qos_depth 1 a burst would be cut to its last frame in transit
        h.publish("front", m)
        time.sleep(0.1)
    good = image_msg(frame(7), stamp_s=4242)
    time.sleep(0.2)
    h.publish("front", good)
    wait_for(lambda: any(c.header.stamp.sec == 4242 for c in h.captions), what="caption of the good frame")
    assert h.stats("front.frames_refused") == len(bad)


def test_compressed_camera_and_corrupt_jpeg(harness):
    import cv2

    h = harness(caption_rate_hz=20.0, transports=["compressed"]).start()
    h.publish("front", CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not a jpeg"), compressed=True)
    ok, jpg = cv2.imencode(".png", frame(8)[:, :, ::-1])
    good = CompressedImage(format="png", data=jpg.tobytes())
    good.header.stamp = Time(sec=31, nanosec=0)
    time.sleep(0.2)
    h.publish("front", good, compressed=True)
    wait_for(lambda: any(c.header.stamp.sec == 31 for c in h.captions), what="caption of the PNG frame")
    assert h.stats("front.frames_refused") == 1


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_fast_camera_drops_frames_without_growing_memory_or_latency(harness):
    # change_threshold 0: the flood is one frame over and over, which would otherwise be re-captioned
    # without inference (test_unchanged_frames_...): here inference must be the slow part.
    h = harness(caption_rate_hz=30.0, max_new_tokens=4, change_threshold=0.0).start()
    decoder = h.node.vlm.decoder
    original = decoder.run
    # inference clearly slower than the camera
    decoder.run = lambda e, *row: (time.sleep(0.01), original(e, *row))[1]
    big = frame(9, w=320, h=240)
    msgs = [image_msg(big, stamp_s=i) for i in range(400)]
    h.publish("front", msgs[0])
    rss_before = _rss_mb()
    for i, m in enumerate(msgs):  # ~200 Hz for 2 s
        m.header.stamp = Time(sec=i, nanosec=0)
        h.publish("front", m)
        time.sleep(0.005)
    t_end = time.monotonic()
    # No backlog: right after the flood, the caption is of one of the newest frames.
    wait_for(lambda: h.captions and h.captions[-1].header.stamp.sec >= 390, timeout=3.0,
             what="caption of one of the last frames within 3 s")
    rss_after = _rss_mb()
    received, dropped = h.stats("front.frames_received"), h.stats("front.frames_dropped")
    assert received > 100 and dropped > received // 2, (received, dropped)
    assert len(h.captions) >= 3
    assert time.monotonic() - t_end < 5
    late = [c for c in h.captions if c.header.stamp.sec >= 200]
    assert late, "captions kept coming while the camera flooded the node"
    assert rss_after - rss_before < 60, f"memory grew by {rss_after - rss_before:.0f} MB"
    decoder.run = original


def test_parameters_validated_and_live(harness):
    h = harness(caption_rate_hz=20.0).start()
    node = h.node
    for name, value, why in [("caption_rate_hz", -1.0, ""), ("backend", "gpu", "backend: must be"),
                             ("temperature", 2.5, ""), ("caption_prompt", " ", "is empty"),
                             ("max_new_tokens", 0, ""), ("engine_dir", "/tmp", "deactivate"),
                             ("cameras", ["a", "a"], "unique")]:
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful, (name, value)
        assert why in result.reason
    assert node.set_parameters([Parameter("caption_prompt", value="How many shapes?")])[0].successful
    assert node.set_parameters([Parameter("max_new_tokens", value=3)])[0].successful
    h.publish("front", image_msg(frame(10), stamp_s=1))
    wait_for(lambda: any(c.prompt == "How many shapes?" for c in h.captions),
             what="caption with the new prompt")
    c = [c for c in h.captions if c.prompt == "How many shapes?"][-1]
    assert c.timings.new_tokens <= 3


def test_lifecycle_bad_engine_then_good_then_cleanup(harness, engine, tmp_path):
    h = harness(engine_dir=str(tmp_path))  # a directory without manifest.json
    node = h.node
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert node.vlm is None and node._state == "unconfigured"
    assert node.set_parameters([Parameter("engine_dir", value=engine)])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    h.publish("front", image_msg(frame(11), stamp_s=2))
    wait_for(lambda: node.worker.latest("front") is not None)
    assert h.ask(question="ok?").success
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert "not active" in h.ask(question="ok?").error
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.vlm is None and node.worker is None  # the engine is freed


def test_annotated_frames_only_while_someone_subscribes(harness, monkeypatch):
    import mobilevlm_ros.ros.node as node_module

    calls = []
    real_draw = node_module.draw_answer
    monkeypatch.setattr(node_module, "draw_answer", lambda *a: calls.append(1) or real_draw(*a))
    h = harness().start()
    rgb = frame(12, w=72, h=40)
    assert h.ask(question="What is it?", image=image_msg(rgb, stamp_s=5)).success
    assert calls == []  # nobody listens: nothing drawn
    got = []
    h.client.create_subscription(Image, "/vlm/annotated", got.append, 5)
    wait_for(lambda: h.node.annotated_pub.get_subscription_count() > 0, what="annotated subscriber")
    assert h.ask(question="What is it?", image=image_msg(rgb, stamp_s=6)).success
    wait_for(lambda: got, what="an annotated frame")
    assert (got[0].width, got[0].height, got[0].encoding, got[0].header.stamp.sec) == (72, 40, "rgb8", 6)
    assert calls == [1]


def test_deactivating_during_a_goal_aborts_it_with_the_reason(harness, capfd):
    h = harness().start()
    decoder = h.node.vlm.decoder
    original = decoder.run
    # a long answer surely runs while we deactivate
    decoder.run = lambda e, *row: (time.sleep(0.02), original(e, *row))[1]
    handle, feedback = _send_goal(h, question="Tell a long story.", max_new_tokens=300, temperature=1.0,
                                  image=image_msg(frame(13), stamp_s=8))
    wait_for(lambda: feedback, what="first feedback")
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    res_fut = handle.get_result_async()
    wait_for(res_fut.done, what="result of the goal")
    res = res_fut.result()
    assert res.status == GoalStatus.STATUS_ABORTED
    assert not res.result.success and res.result.error == "node deactivated"
    decoder.run = original
    err = capfd.readouterr().err
    assert "Traceback" not in err and "invalid transition" not in err, err
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.ask(question="Still there?", image=image_msg(frame(13), stamp_s=9)).success


def test_live_parameters_the_engine_cannot_run_are_refused(harness):
    h = harness().start()
    node = h.node
    r = node.set_parameters([Parameter("max_new_tokens", value=2048)])[0]
    assert not r.successful and "context 512 positions" in r.reason and "lower max_new_tokens" in r.reason
    for prompt, why in [("Look at <image> here", "<image>"), ("Hi USER: ASSISTANT: hello", "markers")]:
        r = node.set_parameters([Parameter("caption_prompt", value=prompt)])[0]
        assert not r.successful and why in r.reason
    assert node.get_parameter("max_new_tokens").value == 8  # nothing changed
    # The largest value that fits the caption prompt is accepted, one more is not.
    room = 512 - node.vlm.encode_prompt(node.get_parameter("caption_prompt").value, 1).text_tokens - 16
    assert node.set_parameters([Parameter("max_new_tokens", value=room)])[0].successful
    assert not node.set_parameters([Parameter("max_new_tokens", value=room + 1)])[0].successful


def test_configure_refuses_parameters_the_engine_cannot_run(harness):
    h = harness(max_new_tokens=2000)
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.node.vlm is None


def test_bad_requests_get_a_reason(harness):
    h = harness().start()
    img = image_msg(frame(14), stamp_s=1)
    r = h.ask(question="What is it?", image=img, temperature=float("nan"))
    assert not r.success and "temperature is NaN" in r.error
    r = h.ask(question="USER: ASSISTANT: </s>", image=img)
    assert not r.success and "markers" in r.error
    hdr = CompressedImage(format="jpeg",
                          data=b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 9000 +X 9000\n" + bytes(64))
    r = h.ask(question="What is it?", compressed_image=hdr)
    assert not r.success and "not JPEG or PNG data" in r.error
    assert h.ask(question="What is it?", image=img).success


def test_an_empty_answer_is_reported_with_its_finish_reason(harness):
    h = harness().start()
    decoder, eos = h.node.vlm.decoder, h.node.vlm.tokenizer.eos_id
    original = decoder.run

    def eos_first(embeds, *row):  # the real decoder runs; its answer is made to be EOS at once
        logits = original(embeds, *row)
        logits[eos] = logits.max() + 1.0
        return logits

    decoder.run = eos_first
    r = h.ask(question="What is it?", image=image_msg(frame(15), stamp_s=1))
    decoder.run = original
    assert not r.success and r.error == "the model gave an empty answer (finish reason: eos)"
    assert r.answer.finish_reason == "eos" and r.answer.text == ""


# -- vision_msgs detections, lifecycle publishers, QoS mismatches --------------------------------
DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engines", "demo")


def test_detections_match_the_grounded_answer(harness):
    """A separate subscriber gets ~/detections (vision_msgs) for an answer with a box: same header,
    one Detection2D per box, the phrase as class_id, the box in source pixels."""
    from vision_msgs.msg import Detection2DArray

    from mobilevlm_ros.demo import scenes
    from mobilevlm_ros.runtime.grounding import grounding_prompt

    h = harness(engine_dir=DEMO, max_new_tokens=32).start()
    got = []
    h.client.create_subscription(Detection2DArray, "/vlm/detections", got.append, 10)
    wait_for(lambda: h.node.detections_pub.get_subscription_count() > 0, what="detections subscriber")
    scene = scenes.make_scene(20_000_003)
    phrase = scenes.referring_phrase(scene, scene.objects[0])
    r = h.ask(question=grounding_prompt(phrase),
              image=image_msg(scene.image, stamp_s=77, frame_id="front_optical"))
    assert r.success and r.answer.boxes, r.error
    wait_for(lambda: got, what="detections")
    d = got[-1]
    assert (d.header.stamp.sec, d.header.frame_id) == (77, "front_optical")
    assert len(d.detections) == len(r.answer.boxes)
    for det, box in zip(d.detections, r.answer.boxes):
        assert det.header.frame_id == "front_optical"
        assert det.results[0].hypothesis.class_id == box.label
        center = (det.bbox.center.position.x, det.bbox.center.position.y)
        assert center == pytest.approx((box.center_x, box.center_y))
        assert (det.bbox.size_x, det.bbox.size_y) == pytest.approx((box.size_x, box.size_y))
    # An answer without a box publishes no detections.
    n = len(got)
    assert h.ask(question="How many objects are there?", image=image_msg(scene.image, stamp_s=78)).success
    time.sleep(0.3)
    assert len(got) == n


def test_outputs_are_lifecycle_publishers_silent_while_inactive(harness):
    from rclpy.lifecycle.publisher import LifecyclePublisher

    h = harness().start()
    node = h.node
    outputs = (node.caption_pub, node.detections_pub, node.annotated_pub, node.diag_pub)
    assert all(isinstance(p, LifecyclePublisher) for p in outputs)
    wait_for(lambda: node.caption_pub.get_subscription_count() > 0, what="caption subscriber")
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    node.caption_pub.publish(Caption(text="while inactive"))  # what a late worker callback would do
    time.sleep(0.3)
    assert not any(c.text == "while inactive" for c in h.captions)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    node.caption_pub.publish(Caption(text="while active"))
    wait_for(lambda: any(c.text == "while active" for c in h.captions), what="caption while active")


def _diagnostic_values(h):
    n = len(h.diagnostics)
    wait_for(lambda: len(h.diagnostics) > n, what="fresh diagnostics")
    status = h.diagnostics[-1].status[0]
    return status, {kv.key: kv.value for kv in status.values}


def test_a_qos_mismatch_is_one_clear_warning_and_counted(harness, capfd):
    """A best-effort camera and a node set to reliable: DDS connects nothing. The node says so once
    (topic, both policies, the parameter), counts it in /diagnostics; same for an output whose
    subscriber asks for more than the node offers."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    h = harness(qos_reliability="reliable").start()
    camera = h.client.create_publisher(Image, "/front/image_raw", qos_profile_sensor_data)  # best effort
    late_joiner = h.client.create_subscription(  # transient_local: wants old captions the node does not keep
        Caption, "/vlm/caption", lambda m: None,
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.TRANSIENT_LOCAL))
    end = time.monotonic() + TIMEOUT
    values = {}
    while time.monotonic() < end:
        status, values = _diagnostic_values(h)
        if "/front/image_raw.qos_incompatible" in values and "/vlm/caption.qos_incompatible" in values:
            break
    assert int(values["/front/image_raw.qos_incompatible"]) >= 1
    assert int(values["/vlm/caption.qos_incompatible"]) >= 1
    assert status.level == status.WARN and "incompatible QoS" in status.message
    camera.publish(image_msg(frame(3), stamp_s=1))
    err = capfd.readouterr().err
    line = [s for s in err.splitlines() if "/front/image_raw: incompatible QoS (RELIABILITY)" in s]
    assert len(line) == 1, err  # once, however often DDS reports it
    assert "this node subscribes with reliable, the publisher has best_effort" in line[0]
    assert "qos_reliability" in line[0]
    assert any("/vlm/caption: incompatible QoS (DURABILITY): this node publishes with volatile, "
               "the subscriber has transient_local" in s for s in err.splitlines()), err
    h.client.destroy_subscription(late_joiner)


def test_unchanged_frames_republish_the_caption_marked_reused(harness):
    h = harness(caption_rate_hz=20.0).start()  # change_threshold: the default
    rgb = frame(21, w=96, h=72)
    for i in range(3):
        h.publish("front", image_msg(rgb, stamp_s=100 + i))
        wait_for(lambda: any(c.header.stamp.sec == 100 + i for c in h.captions), what=f"caption {i}")
    captions = [next(c for c in h.captions if c.header.stamp.sec == 100 + i) for i in range(3)]
    assert [c.reused for c in captions] == [False, True, True]
    assert len({c.text for c in captions}) == 1 and captions[1].timings.total_s == 0.0
    h.publish("front", image_msg(frame(22, w=96, h=72), stamp_s=200))  # another scene
    wait_for(lambda: any(c.header.stamp.sec == 200 for c in h.captions), what="caption of the new scene")
    assert not next(c for c in h.captions if c.header.stamp.sec == 200).reused
    assert h.stats("front.captions_reused") == 2 and h.stats("front.captions") == 2
