"""The VLM node: a lifecycle node that turns camera frames into captions and questions into answers.

  ros2 run mobilevlm_ros vlm_node --ros-args -p engine_dir:=engines/demo -p cameras:="[front]"

Topics (names relative to the node): subscribes N/image_raw or N/image_raw/compressed per camera;
publishes ~/caption (Caption), ~/detections (vision_msgs/Detection2DArray, for answers and captions
with boxes), ~/annotated (Image, only while subscribed), /diagnostics. Every output is a lifecycle
publisher: an inactive node publishes nothing by construction. A peer with incompatible QoS is one
throttled warning naming the topic, both policies and the fix, and a count in /diagnostics.
Serves ~/ask as a service and as an action (streaming feedback, cancel), with typed answers
(answer_type) and follow-ups (conversation). Standing watches (watches.py) come from the params file
or ~/add_watch / ~/remove_watch; each change is an event on ~/watch_events, and every watch's state
is on ~/watch_states (transient_local: a late subscriber gets it at once).
The engine loads on configure and is freed on cleanup; inference runs on one worker thread
(worker.py) so callbacks, services and cancels stay responsive.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from ..action import Ask as AskAction
from ..msg import Caption, WatchEvent, WatchStates
from ..runtime.answer_types import AnswerType
from ..runtime.errors import ImageError, PromptError, VLMError
from ..runtime.generation import MAX_TEMPERATURE
from ..runtime.prompt import check_question
from ..srv import AddWatch, RemoveWatch
from ..srv import Ask as AskService
from . import params as P
from .annotate import draw_answer
from .bridge import (
    check_compressed_imgmsg,
    check_imgmsg,
    compressed_imgmsg_to_rgb,
    imgmsg_to_rgb,
    rgb_to_imgmsg,
)
from .camera_input import CameraInput, reliability_name
from .conversations import NEW, Conversations
from .messages import (
    answer_msg,
    answer_type_from_msg,
    caption_msg,
    detections_msg,
    watch_event_msg,
    watch_states_msg,
)
from .qos_check import PublisherEventCallbacks, incompatible_message
from .share import share_path
from .watches import Watches, make_watch
from .worker import Frame, Job, Worker

ANSWER_TIMEOUT_S = 600.0
# Service requests and action goals wait in DDS's queue until an executor thread takes them; a
# burst beyond its depth is lost without a word (rclpy's default depth is 10). Up to max_queue + 1
# of them hold a thread while they wait for the worker, the rest are taken at once and refused as
# busy: a depth of 64 answers every request of any burst a robot's nodes make (50 are tested).
REQUEST_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=64, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
# ~/watch_states: the latest only, kept for subscribers that join later (a behavior tree starting late).
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# How long a finished goal's result waits for its client (rclpy's default is 900 s). Clients ask for
# it as soon as the goal is accepted; a result nobody fetched in a minute is not coming.
RESULT_TIMEOUT_S = 60
# An incompatible peer reports once per discovery; a camera driver restarting in a loop would flood.
QOS_WARNING_PERIOD_S = 10.0
# How often each camera's publishers are looked up (qos_reliability auto follows them).
GRAPH_CHECK_S = 0.5
LOST_HINT_PERIOD_S = 60.0


def _descriptor(p: P.Param) -> ParameterDescriptor:
    # An empty list has no type rclpy could infer: a params file's list of strings gives it one.
    d = ParameterDescriptor(description=p.description, dynamic_typing=p.default == [])
    if p.range is not None:
        if isinstance(p.default, int) and not isinstance(p.default, bool):
            d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]),
                                                         to_value=float(p.range[1]))]
    return d


class VLMNode(LifecycleNode):
    def __init__(self, name: str = "vlm", **kwargs):
        super().__init__(name, **kwargs)
        self._guard_change_state()
        for p in P.PARAMS:
            self._declare(p.name, p.default, _descriptor(p))
        for name in self._p("watches"):  # watch.NAME.FIELD, read on activate
            for field, default in P.WATCH_FIELDS.items():
                self._declare(f"watch.{name}.{field}", default,
                              ParameterDescriptor(dynamic_typing=default == []))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.vlm = None
        self.worker: Optional[Worker] = None
        self.model_id = ""
        self._state = "unconfigured"
        self._group = ReentrantCallbackGroup()
        self._inputs = {}  # camera -> its CameraInput (the subscription, re-made as publishers change)
        self._graph_timer = None
        self._service = None
        self._action = None
        self._diag_timer = None
        self._goals = {}
        self._goals_lock = threading.Lock()
        self.caption_pub = None
        self.detections_pub = None
        self.annotated_pub = None
        self.diag_pub = None
        self._qos_incompatible = {}  # topic -> incompatible-QoS events seen (for /diagnostics)
        self._lost_reported = {}  # camera -> frames lost when we last said so
        self.watches = Watches()
        self.conversations = Conversations()
        self.watch_events_pub = self.watch_states_pub = None
        self._watch_services = []
        self._qos_lock = threading.Lock()

    def _declare(self, name: str, default, descriptor: ParameterDescriptor) -> None:
        self.declare_parameter(name, default, descriptor)
        if default == [] and self.get_parameter(name).value is None:
            # A params file's `[]` arrives without a type (rcl cannot tell what it is a list of).
            self.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, [])])

    def _guard_change_state(self) -> None:
        """Refuse lifecycle transitions that are not valid in the current state, with a log line.

        rclpy (Jazzy and Humble alike) raises RCLError out of its change_state service for such a
        request ("Transition is not registered"), which ends spin() and with it the process: one
        careless `ros2 lifecycle set` would take the node down. The check runs before rclpy's own
        handler; the lifecycle services share one mutually exclusive callback group, so the state
        cannot change between the check and the transition.
        """
        service = self._service_change_state
        transition_to = service.callback

        def change_state(request, response):
            t = request.transition
            valid = [(tid, label) for tid, label, *_ in self._state_machine.available_transitions]
            if not any(label == t.label if t.label else tid == t.id for tid, label in valid):
                state = self._state_machine.current_state[1]
                self.get_logger().warning(
                    f"lifecycle transition {t.label or t.id} refused: not valid in state '{state}' "
                    f"(valid: {', '.join(f'{label} ({tid})' for tid, label in valid)})")
                response.success = False
                return response
            return transition_to(request, response)

        service.callback = change_state

    # -- parameters --------------------------------------------------------------------------------
    def _p(self, name: str):
        return self.get_parameter(name).value

    def _values(self, pending: Optional[dict] = None) -> dict:
        """Every parameter's value, with `pending` (a set-parameters call not applied yet) on top."""
        return {p.name: (pending[p.name] if pending and p.name in pending else self._p(p.name))
                for p in P.PARAMS}

    def _on_set_parameters(self, changes) -> SetParametersResult:
        for c in changes:
            spec = P.BY_NAME.get(c.name)
            if spec is None:
                continue
            reason = P.check(c.name, c.value)
            if not reason and not spec.live and self._state != "unconfigured":
                reason = f"{c.name} is read on configure/activate: deactivate and clean up the node first"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        values = self._values({c.name: c.value for c in changes})
        if {"caption_prompt", "max_new_tokens"} & {c.name for c in changes}:
            reason = self._engine_refuses(values)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        if self.worker is not None:
            self._apply_live(values)
        return SetParametersResult(successful=True)

    def _engine_refuses(self, values: dict) -> str:
        """Why the loaded engine cannot run caption_prompt with max_new_tokens ('' if it can, or if
        no engine is loaded yet: configure checks again)."""
        if self.vlm is None:
            return ""
        prompt, max_new_tokens = values["caption_prompt"], int(values["max_new_tokens"])
        try:
            self.vlm.encode_prompt(prompt, max_new_tokens)
        except PromptError as e:
            return (f"max_new_tokens {max_new_tokens} with caption_prompt {prompt!r} does not fit the engine "
                    f"(context {self.vlm.decoder.max_length} positions): {e}")
        return ""

    def _apply_live(self, values: dict) -> None:
        w = self.worker
        w.caption_rate_hz = float(values["caption_rate_hz"])
        w.caption_prompt = values["caption_prompt"]
        w.max_queue = int(values["max_queue"])
        w.change_threshold = float(values["change_threshold"])
        w.caption_params = P.generation_params(values)
        w.watch_params = P.generation_params(values)
        self.conversations.max_turns = int(values["conversation_max_turns"])
        self.conversations.idle_s = float(values["conversation_idle_s"])

    # -- lifecycle -------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ..runtime.vlm import VLM

        engine = self._p("engine_dir") or share_path("engines/demo")
        try:
            self.vlm = VLM(engine, backend=self._p("backend"), threads=self._p("threads"),
                           max_length=self._p("max_context"), max_batch=self._p("max_batch"))
        except Exception as e:  # VLMError names the file and the fix; anything else is still one line
            reason = str(e) if isinstance(e, VLMError) else f"{engine}: {type(e).__name__}: {e}"
            self.get_logger().error(f"cannot load the engine: {reason}")
            return TransitionCallbackReturn.FAILURE
        refused = self._engine_refuses(self._values())
        if refused:
            self.vlm = None
            self.get_logger().error(f"cannot use the engine {engine}: {refused}")
            return TransitionCallbackReturn.FAILURE
        self.model_id = self.vlm.model_id
        self.vlm.grammars  # built now (a vocabulary's worth of work), not at the first typed question
        self.watches = Watches()
        self.worker = Worker(self.vlm, self._publish_caption, self._publish_answer_boxes,
                             log_error=lambda m: self.get_logger().error(m),
                             log_refused=lambda m: self.get_logger().warning(m, throttle_duration_sec=5.0),
                             watches=self.watches, on_watch=self._publish_watch)
        self._apply_live(self._values())
        self.caption_pub = self._output(Caption, "~/caption", 10)
        self.detections_pub = self._output(Detection2DArray, "~/detections", 10)
        self.annotated_pub = self._output(Image, "~/annotated", 2)
        self.diag_pub = self._output(DiagnosticArray, "/diagnostics", 10)
        self.watch_events_pub = self._output(WatchEvent, "~/watch_events", 50)
        self.watch_states_pub = self._output(WatchStates, "~/watch_states", LATCHED_QOS)
        self._watch_services = [
            self.create_service(AddWatch, "~/add_watch", self._serve_add_watch, qos_profile=REQUEST_QOS,
                                callback_group=self._group),
            self.create_service(RemoveWatch, "~/remove_watch", self._serve_remove_watch,
                                qos_profile=REQUEST_QOS, callback_group=self._group)]
        self._service = self.create_service(AskService, "~/ask", self._serve_ask, qos_profile=REQUEST_QOS,
                                            callback_group=self._group)
        self._action = ActionServer(self, AskAction, "~/ask", execute_callback=self._execute_ask,
                                    goal_callback=lambda goal: GoalResponse.ACCEPT,
                                    cancel_callback=self._cancel_ask, callback_group=self._group,
                                    goal_service_qos_profile=REQUEST_QOS,
                                    result_service_qos_profile=REQUEST_QOS,
                                    cancel_service_qos_profile=REQUEST_QOS, result_timeout=RESULT_TIMEOUT_S)
        self._state = "inactive"
        self.get_logger().info(f"engine {engine} loaded ({self.model_id}, {self.vlm.manifest.precision}, "
                               f"backend {self.vlm.backend})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            pairs = P.camera_transports(self._p("cameras"), self._p("transports"))
        except ValueError as e:
            self.get_logger().error(str(e))
            return TransitionCallbackReturn.FAILURE
        mode = self._p("qos_reliability")
        for camera, transport in pairs:
            self.worker.add_camera(camera)
            if transport == "compressed":
                msg_type, topic, check, to_rgb = (CompressedImage, f"{camera}/image_raw/compressed",
                                                  check_compressed_imgmsg, compressed_imgmsg_to_rgb)
            else:
                msg_type, topic, check, to_rgb = Image, f"{camera}/image_raw", check_imgmsg, imgmsg_to_rgb
            self._inputs[camera] = CameraInput(
                self, camera, msg_type, topic, mode, self._p("qos_depth"),
                on_message=lambda m, c=camera, k=check, f=to_rgb: self._on_frame(c, m, k, f),
                incompatible_qos=lambda qos, t=topic, c=camera: self._on_camera_incompatible(c, t, qos, mode),
                log=self.get_logger().info)
        # rclpy has no graph-change callback (Humble has no matched event either): look every
        # GRAPH_CHECK_S, in the frame callbacks' group, so no frame callback runs during a re-subscribe.
        self._graph_timer = self.create_timer(GRAPH_CHECK_S, self._follow_publishers)
        self._add_declared_watches([c for c, _ in pairs])
        self.worker.start()
        self._diag_timer = self.create_timer(self._p("diagnostics_period_s"), self._publish_diagnostics)
        self._state = "active"
        self.get_logger().info(f"active: cameras {[c for c, _ in pairs]}, "
                               f"captions at {self._p('caption_rate_hz')} Hz")
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_watch(None)  # the states as they stand (a subscriber latches the latest)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        super().on_deactivate(state)  # outputs off first: nothing is published from here on
        self._state = "inactive"
        self.worker.stop("node deactivated")
        for timer in (self._diag_timer, self._graph_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._diag_timer = self._graph_timer = None
        for camera_input in self._inputs.values():
            camera_input.destroy()  # after a graph check under way; later ones find it closed
        self._inputs, self._lost_reported = {}, {}
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.worker is not None:
            self.worker.stop("node shut down")
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Free the engine and everything made on configure."""
        if self._action is not None:
            self._action.destroy()
        for service in [self._service] + self._watch_services:
            if service is not None:
                self.destroy_service(service)
        for pub in (self.caption_pub, self.detections_pub, self.annotated_pub, self.diag_pub,
                    self.watch_events_pub, self.watch_states_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._action = self._service = None
        self._watch_services = []
        self.caption_pub = self.detections_pub = self.annotated_pub = self.diag_pub = None
        self.watch_events_pub = self.watch_states_pub = None
        self.worker = None
        self.vlm = None

    # -- frames and captions ----------------------------------------------------------------------
    def _on_frame(self, camera: str, msg, check, to_rgb) -> None:
        # Checked now (cheap: sizes, encoding, magic bytes), converted only if inference uses it.
        try:
            check(msg)
        except ImageError as e:
            self.worker.refuse_frame(camera)
            self.get_logger().warning(f"camera '{camera}': frame refused: {e}", throttle_duration_sec=5.0)
            return
        self.worker.put_frame(camera, Frame(msg, to_rgb, time.monotonic()))

    def _follow_publishers(self) -> None:
        """Each camera's subscription re-made if its publishers now call for another reliability; a
        hint, at most every LOST_HINT_PERIOD_S, when DDS lost frames of a camera."""
        for camera, camera_input in self._inputs.items():
            camera_input.update()
            lost = camera_input.frames_lost
            if lost > self._lost_reported.get(camera, 0):
                self._lost_reported[camera] = lost
                self.get_logger().warning(
                    f"camera '{camera}': {lost} frame(s) lost in transport on {camera_input.topic_name} "
                    f"(subscribed {reliability_name(camera_input.reliability)}). Large raw frames from "
                    "another process lose fragments in Fast DDS's default 512 KB shared-memory segment: "
                    "load config/fastdds_large_frames.xml in the camera's process (README: Large raw frames "
                    "from another process), or publish reliable, or compressed",
                    throttle_duration_sec=LOST_HINT_PERIOD_S)

    def _on_camera_incompatible(self, camera: str, topic: str, qos: QoSProfile, mode: str):
        """The incompatible-QoS callback of a camera subscription: the loud report when the reliability
        is fixed by the parameter; under auto the next look at the graph re-subscribes (within
        GRAPH_CHECK_S), so a publisher that just appeared is no mismatch to report."""
        if mode != "auto":
            fix = (f"Camera '{camera}': set the parameter qos_reliability to auto (follows the publishers) "
                   "or to match it.")
            return self._on_incompatible_qos(topic, qos, "subscribes", fix)
        return lambda info: self.get_logger().debug(
            f"camera '{camera}': a publisher with incompatible QoS appeared on {topic}; following it")

    def _output(self, msg_type, topic: str, depth):
        """A lifecycle publisher (enabled only while active) that reports incompatible subscribers;
        `depth`: its keep-last depth, or a whole QoSProfile."""
        qos = depth if isinstance(depth, QoSProfile) else QoSProfile(history=HistoryPolicy.KEEP_LAST,
                                                                     depth=depth)
        fix = "Subscribe with reliable, volatile QoS (or best_effort)."
        events = PublisherEventCallbacks(
            incompatible_qos=self._on_incompatible_qos(topic, qos, "publishes", fix))
        return self.create_lifecycle_publisher(msg_type, topic, qos, event_callbacks=events)

    def _on_incompatible_qos(self, topic: str, ours: QoSProfile, we_are: str, fix: str):
        """The incompatible-QoS event callback of one of our topics: count it; say it at most once
        every QOS_WARNING_PERIOD_S per topic."""
        last_warning = -QOS_WARNING_PERIOD_S

        def on_event(info) -> None:
            nonlocal last_warning
            name = self.resolve_topic_name(topic)
            with self._qos_lock:
                self._qos_incompatible[name] = self._qos_incompatible.get(name, 0) + info.total_count_change
            if time.monotonic() - last_warning < QOS_WARNING_PERIOD_S:
                return
            last_warning = time.monotonic()
            peers = (self.get_publishers_info_by_topic(name) if we_are == "subscribes"
                     else self.get_subscriptions_info_by_topic(name))
            theirs = [p.qos_profile for p in peers if p.node_name != self.get_name()]
            message = incompatible_message(name, info.last_policy_kind, ours, theirs, we_are, fix)
            self.get_logger().warning(message)

        return on_event

    def _publish_caption(self, camera: str, frame: Frame, answer) -> None:
        self.caption_pub.publish(caption_msg(answer, frame.header, camera, self.model_id))
        self._publish_boxes(frame, answer)

    def _publish_annotated(self, frame: Frame, answer) -> None:
        # Drawing costs a frame copy and some text rendering: only when someone looks.
        pub = self.annotated_pub
        if pub is not None and pub.get_subscription_count() > 0:
            pub.publish(rgb_to_imgmsg(draw_answer(frame.rgb, answer.text, answer.boxes), frame.header))

    def _publish_boxes(self, frame: Frame, answer) -> None:
        """~/detections (when the answer has boxes) and ~/annotated."""
        if answer.boxes:
            self.detections_pub.publish(detections_msg(answer, frame.header))
        self._publish_annotated(frame, answer)

    def _publish_answer_boxes(self, job: Job) -> None:
        self._publish_boxes(job.frame, job.answer)

    # -- questions -------------------------------------------------------------------------------
    def _job_from(self, request) -> Job:
        """A Job for a service request or action goal; raises VLMError/ValueError with the reason."""
        # rclpy keeps a goal's request until its result expires: take the images out of it, so a
        # finished goal costs bytes, not megabytes (the Frame holds what the worker needs).
        image, compressed = request.image, request.compressed_image
        request.image, request.compressed_image = Image(), CompressedImage()
        if self._state != "active" or self.worker is None:
            raise VLMError(f"node is {self._state}, not active")
        question = check_question(request.question)
        answer_type = self._answer_type(answer_type_from_msg(request.answer_type), request.max_new_tokens)
        now = time.monotonic()
        conversation, history = request.conversation.strip(), ()
        if conversation and conversation != NEW:  # a follow-up: its conversation's image and turns
            if len(image.data) or len(compressed.data):
                raise VLMError("a follow-up question is about its conversation's image: send no image")
            known = self.conversations.get(conversation)
            frame, camera, history = known.frame, known.camera, tuple(known.turns)
        elif len(image.data):
            check_imgmsg(image)
            frame, camera = Frame(image, imgmsg_to_rgb, now), ""
        elif len(compressed.data):
            check_compressed_imgmsg(compressed)
            frame, camera = Frame(compressed, compressed_imgmsg_to_rgb, now), ""
        else:
            cameras = self._p("cameras")
            camera = request.camera or cameras[0]
            if camera not in cameras:
                raise VLMError(f"unknown camera '{camera}'; cameras: {', '.join(cameras)}")
            frame = self.worker.latest(camera)
            if frame is None:
                raise VLMError(f"no frame from camera '{camera}' yet")
        if math.isnan(request.temperature):  # NaN < 0 is false too: it must not pass for "the default"
            raise ValueError(f"temperature is NaN; give 0..{MAX_TEMPERATURE:g}, "
                             "or < 0 for the node's temperature")
        # Ask's conventions: max_new_tokens 0 and temperature < 0 mean "the node's parameter".
        params = P.generation_params(self._values(), max_new_tokens=request.max_new_tokens or None,
                                     temperature=request.temperature if request.temperature >= 0 else None)
        if conversation == NEW:
            conversation = self.conversations.start(camera, frame).id
        return Job(frame=frame, camera=camera, question=question, params=params,
                   answer_type=answer_type if answer_type.typed else None, history=history,
                   conversation=conversation)

    def _answer_type(self, answer_type: AnswerType, max_new_tokens: int = 0) -> AnswerType:
        """`answer_type` checked, and its grammar compiled, before anything is queued: a bad type is
        the request's error (AnswerTypeError names it)."""
        answer_type = answer_type.check()
        if answer_type.typed and answer_type.alternatives() is None:
            self.vlm.grammars.matcher(answer_type, int(max_new_tokens or self._p("max_new_tokens")))
        return answer_type

    def _busy(self) -> str:
        return (f"busy: {self.worker.queue_length()} question(s) already waiting (max_queue "
                f"{self.worker.max_queue}); try again later")

    def _serve_ask(self, request, response):
        try:
            job = self._job_from(request)
        except (VLMError, ValueError) as e:
            response.success, response.error = False, str(e)
            return response
        if not self.worker.submit(job):
            response.success, response.error = False, self._busy()
            return response
        job.done.wait(ANSWER_TIMEOUT_S)
        return self._fill(response, job)

    def _fill(self, out, job: Job):
        if not job.done.is_set():
            job.cancel.set()  # nobody will read it any more: stop spending the worker on it
        error = job.stopped or job.error or ("" if job.done.is_set() else "timed out")
        conversation = job.conversation
        if job.answer is not None:
            out.answer = answer_msg(job.answer, job.frame.header, job.camera, self.model_id, conversation)
            if not error and not job.answer.text:
                error = f"the model gave an empty answer (finish reason: {job.answer.finish_reason})"
            error = error or job.answer.error  # a typed answer cut before it was whole
        out.success = job.answer is not None and not error
        out.error = error
        if out.success and conversation:
            self.conversations.add_turn(conversation, job.question, job.answer.text)
        return out

    def _execute_ask(self, goal_handle):
        result = AskAction.Result()
        try:
            job = self._job_from(goal_handle.request)
        except (VLMError, ValueError) as e:
            goal_handle.abort()
            result.success, result.error = False, str(e)
            return result
        job.on_text = lambda text, n: goal_handle.publish_feedback(AskAction.Feedback(text=text, tokens=n))
        key = bytes(goal_handle.goal_id.uuid)
        with self._goals_lock:
            self._goals[key] = job
        try:
            if goal_handle.is_cancel_requested:
                job.cancel.set()
            if not self.worker.submit(job):
                goal_handle.abort()
                result.success, result.error = False, self._busy()
                return result
            job.done.wait(ANSWER_TIMEOUT_S)
        finally:
            with self._goals_lock:
                self._goals.pop(key, None)
        self._fill(result, job)
        if goal_handle.is_cancel_requested:  # the client's cancel; the node's own stops abort below
            goal_handle.canceled()
            result.success, result.error = False, "cancelled"
        elif result.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _cancel_ask(self, goal_handle) -> CancelResponse:
        with self._goals_lock:
            job = self._goals.get(bytes(goal_handle.goal_id.uuid))
        if job is not None:
            job.cancel.set()  # the worker stops before its next token
        return CancelResponse.ACCEPT

    # -- watches ---------------------------------------------------------------------------------
    def _add_watch(self, name: str, question: str, answer_type: AnswerType, cameras, period_s: float,
                   hysteresis: int, min_confidence: float) -> None:
        """Check and add (or replace) a watch; WatchError / AnswerTypeError names what is wrong."""
        watch = make_watch(name, question, answer_type, list(cameras), list(self._p("cameras")), period_s,
                           hysteresis, min_confidence)
        check_question(watch.question)
        checked = self._answer_type(watch.answer_type)
        self.watches.add(type(watch)(**{**vars(watch), "answer_type": checked}))
        self.get_logger().info(f"watch '{name}' on {', '.join(watch.cameras)}: {watch.question!r} "
                               f"({checked.kind}, hysteresis {watch.hysteresis}, "
                               f"min_confidence {watch.min_confidence:g})")
        self._publish_watch(None)

    def _add_declared_watches(self, cameras) -> None:
        """The params file's watches (watch.NAME.*); a bad one is one error line, the others still run."""
        for name in self._p("watches"):
            f = {field: self._p_or(f"watch.{name}.{field}", default)
                 for field, default in P.WATCH_FIELDS.items()}
            try:
                self._add_watch(name, f["question"], AnswerType(f["type"], tuple(f["choices"]),
                                                                schema=f["schema"] or None),
                                f["cameras"], float(f["period_s"]), int(f["hysteresis"]),
                                float(f["min_confidence"]))
            except (VLMError, ValueError) as e:
                self.get_logger().error(f"watch '{name}' of the params file not added: {e}")

    def _p_or(self, name: str, default):
        try:
            value = self.get_parameter(name).value
        except Exception:  # not declared (a name added later), or a list left empty
            return default
        return default if value is None else value

    def _serve_add_watch(self, request, response):
        if self._state != "active":
            response.success, response.error = False, f"node is {self._state}, not active"
            return response
        if not request.answer_type.kind.strip():
            request.answer_type.kind = "bool"  # AddWatch's default
        try:
            self._add_watch(request.name, request.question, answer_type_from_msg(request.answer_type),
                            request.cameras, float(request.period_s), int(request.hysteresis),
                            float(request.min_confidence))
            response.success = True
        except (VLMError, ValueError) as e:
            response.success, response.error = False, str(e)
        return response

    def _serve_remove_watch(self, request, response):
        try:
            self.watches.remove(request.name)
            response.success = True
            self._publish_watch(None)
        except VLMError as e:
            response.success, response.error = False, str(e)
        return response

    def _publish_watch(self, event) -> None:
        """A watch's value changed (`event`), or only the published states did (None)."""
        if event is not None and self.watch_events_pub is not None:
            self.watch_events_pub.publish(watch_event_msg(event))
            self.get_logger().info(f"watch '{event.watch}' on '{event.camera}': {event.previous_json} -> "
                                   f"{event.value_json} (confidence {event.confidence:.2f})")
        if self.watch_states_pub is not None:
            self.watch_states_pub.publish(watch_states_msg(self.watches.snapshot(),
                                                           self.get_clock().now().to_msg()))

    # -- diagnostics -------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        w = self.worker
        if w is None or self.diag_pub is None:
            return
        snap = w.snapshot()
        values = {"engine": self.vlm.manifest.dir, "model": self.model_id, "backend": self.vlm.backend,
                  "precision": self.vlm.manifest.precision, "questions_answered": snap.answers,
                  "questions_refused_busy": snap.busy_refusals, "questions_waiting": snap.waiting,
                  "max_batch": self.vlm.max_batch, "answers_decoding": snap.decoding,
                  "decode_tokens": snap.decode_tokens, "decode_s": f"{snap.decode_s:.3f}"}
        stale = []
        for cam, st in snap.cameras.items():
            values.update({f"{cam}.frames_received": st.received, f"{cam}.frames_dropped": st.dropped,
                           f"{cam}.frames_refused": st.refused, f"{cam}.captions": st.captions,
                           f"{cam}.captions_reused": st.reused})
            camera_input = self._inputs.get(cam)
            if camera_input is not None:  # where a replay (or a person) must publish this camera's frames
                values.update({f"{cam}.topic": camera_input.topic_name,
                               f"{cam}.qos_reliability": reliability_name(camera_input.reliability),
                               f"{cam}.publishers": len(camera_input.publishers),
                               f"{cam}.frames_lost": camera_input.frames_lost})
            if st.received == 0:
                stale.append(cam)
        t = snap.last_timings
        if t is not None:
            values.update({"last_latency_s": f"{t.total_s:.3f}",
                           "last_decode_tokens_per_s": f"{t.decode_tokens_per_s:.1f}",
                           "last_vision_s": f"{t.vision_s:.3f}", "last_prefill_s": f"{t.prefill_s:.3f}"})
        for watch, cam, st in self.watches.snapshot():
            values.update({f"watch.{watch.name}.{cam}": st.value_json if st.known else "unknown",
                           f"watch.{watch.name}.{cam}.confidence": f"{st.confidence:.3f}",
                           f"watch.{watch.name}.{cam}.evaluations": st.evaluations,
                           f"watch.{watch.name}.{cam}.changes": st.changes})
        values["conversations"] = len(self.conversations)
        with self._qos_lock:
            qos_incompatible = dict(self._qos_incompatible)
        values.update({f"{topic}.qos_incompatible": n for topic, n in qos_incompatible.items()})
        level, message = DiagnosticStatus.OK, "running"
        if stale:
            level, message = DiagnosticStatus.WARN, f"no frames yet from {', '.join(stale)}"
        if qos_incompatible:
            level = DiagnosticStatus.WARN
            message = f"incompatible QoS on {', '.join(sorted(qos_incompatible))}; " + message
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: inference",
                                  message=message, hardware_id=self.vlm.backend,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)


def main(argv=None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = VLMNode()
    if node.get_parameter("autostart").value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
    # A waiting question holds an executor thread: room for the largest queue plus the callbacks.
    executor = MultiThreadedExecutor(num_threads=P.BY_NAME["max_queue"].range[1] + 4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node.worker is not None:
            node.worker.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
